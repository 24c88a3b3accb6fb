//! Writes a protobuf `SendRequest` body to standard output: one well-formed MLS
//! PrivateMessage of `--size` bytes of ciphertext for the given recipients.

use std::io::Write as _;

use bytes::Bytes;
use clap::Parser;
use prost::Message as _;
use relay_core::wire::v1;

#[derive(Debug, Parser)]
struct Args {
    /// Recipient address; repeatable.
    #[arg(long = "to", required = true)]
    to: Vec<String>,
    /// Ciphertext bytes inside the MLS frame.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let message = relay_core::envelope::frame_private_message(b"bench-group", 1, &vec![0xa5; args.size]);
    let req = v1::SendRequest {
        recipients: args
            .to
            .into_iter()
            .map(|address| v1::Recipient {
                address,
                device_ids: vec![],
            })
            .collect(),
        message: Bytes::from(message),
        client_message_id: Bytes::new(),
        urgent: false,
    };
    std::io::stdout().write_all(&req.encode_to_vec())?;
    Ok(())
}
