//! Power loss, modelled: the gateway runs on an ext4 filesystem on a loop device whose
//! backing file is written with direct I/O, so the file holds exactly what the filesystem
//! has sent to its "disk". The filesystem is mounted with `commit=300`, so nothing reaches
//! that disk in the test's lifetime unless something forces it (an `fsync`/`fdatasync`, or
//! sled's `sync_file_range`). Under load, the gateway is killed and the disk image copied at
//! once: that copy is what a power cut would leave (everything the page cache held and no
//! one had made durable is missing). A second gateway is started on the copy, after ext4
//! replays its own journal, and must return every envelope that got a 2xx.
//!
//! Needs root (loop devices, mount); `.ci/run` runs as root. Fails, rather than skips,
//! without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use relay_client::Recipient;

use crate::process::{KeepOnPanic, spawn_gateway_with};

/// A loop-mounted ext4 image, unmounted and detached on drop.
struct Disk {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
    mounted: bool,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (the power-loss test needs util-linux and e2fsprogs)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {} (the power-loss test needs root for loop devices)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Disk {
    /// Attaches `image` and mounts it at `mnt`.
    fn attach(image: &Path, mnt: &Path) -> Self {
        let dev = run(
            "losetup",
            &["--find", "--show", "--direct-io=on", image.to_str().unwrap()],
        );
        std::fs::create_dir_all(mnt).unwrap();
        run("mount", &["-o", "commit=300", &dev, mnt.to_str().unwrap()]);
        Self {
            image: image.to_path_buf(),
            dev,
            mnt: mnt.to_path_buf(),
            mounted: true,
        }
    }

    /// The disk as a power cut would leave it: a copy of the backing file, taken now.
    fn cut_power(&self, copy: &Path) {
        std::fs::copy(&self.image, copy).unwrap();
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        let _ = Command::new("losetup").args(["--detach", &self.dev]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_a_power_cut() {
    let dir = tempfile::Builder::new()
        .prefix("power-loss-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let keep = KeepOnPanic(dir.path().to_path_buf());
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(512 << 20).unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            image.to_str().unwrap(),
        ],
    );
    let disk = Disk::attach(&image, &dir.path().join("mnt"));
    let data = disk.mnt.join("data");
    let log = dir.path().join("gateway.log");
    let toml = "[storage]\njournal_segment_mb = 4\n";
    let gw = spawn_gateway_with(&data, &log, &[], toml).await;
    let register = |address: &'static str| {
        let client = gw.client();
        let token = test_support::provision_token(&data, address, 600_000);
        async move { client.register(&token).await.unwrap().credential }
    };
    let sender = gw.client().with_credential(register("tel:+15550800001").await);
    let receiver_cred = register("tel:+15550800002").await;

    // Concurrent senders; every 2xx is recorded. The cut comes while they are sending.
    let confirmed: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (sender, confirmed) = (sender.clone(), Arc::clone(&confirmed));
        tasks.spawn(async move {
            for i in 0.. {
                let payload = test_support::framed_message(format!("power-{w}-{i}").as_bytes());
                let to = [Recipient::address("tel:+15550800002")];
                match sender.send(&to, payload.clone(), None, false).await {
                    Ok(_) => confirmed.lock().unwrap().push(payload),
                    Err(_) => return,
                }
            }
        });
    }
    // Cut once plenty is acknowledged (senders still running; bounded).
    test_support::eventually("3,000 acknowledged sends", Duration::from_secs(60), async || {
        confirmed.lock().unwrap().len() >= 3_000
    })
    .await;
    // The cut: the process dies (nothing more is written), and the disk is what it held.
    let acked: Vec<Bytes> = confirmed.lock().unwrap().clone();
    gw.kill9();
    let cut = dir.path().join("after-power-loss.img");
    disk.cut_power(&cut);
    while tasks.join_next().await.is_some() {}
    let acked_before_kill = acked.len();
    let all_acked = confirmed.lock().unwrap().clone();
    drop(disk);
    assert!(
        acked_before_kill > 100,
        "the load ran: {acked_before_kill} sends acknowledged"
    );

    // A new machine boots from the cut disk.
    let after = Disk::attach(&cut, &dir.path().join("mnt2"));
    let gw = spawn_gateway_with(&after.mnt.join("data"), &log, &[], toml).await;
    let receiver = gw.client().with_credential(receiver_cred);
    let mut present = std::collections::HashSet::new();
    let mut cursor = 0;
    loop {
        let page = receiver.receive(cursor, 1000, 0).await.unwrap();
        present.extend(page.envelopes.into_iter().map(|e| e.message));
        cursor = page.next_cursor;
        if page.queue_empty {
            break;
        }
    }
    let lost: Vec<&Bytes> = all_acked.iter().filter(|p| !present.contains(*p)).collect();
    eprintln!(
        "power loss: {} sends acknowledged before the cut, {} in the mailbox after it, {} lost",
        all_acked.len(),
        present.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged sends were lost in the power cut",
        lost.len()
    );
    gw.kill9();
    drop(after);
    drop(keep);
}
