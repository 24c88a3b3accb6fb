//! Request limits shared by validation and the gateway's configuration.

/// Every bound of DESIGN.md section 5, with its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest MLS message accepted in one send (bytes).
    pub max_envelope_bytes: usize,
    /// Most recipient addresses in one send.
    pub max_recipients: usize,
    /// Most devices one address may register.
    pub max_devices_per_address: usize,
    /// Most bytes queued for one device; older envelopes are trimmed beyond it.
    pub max_queue_bytes_per_device: u64,
    /// Time to live of an envelope (milliseconds).
    pub ttl_ms: u64,
    /// Largest page a receive may ask for.
    pub max_page: u32,
    /// Longest long-poll (`wait`, seconds).
    pub max_wait_secs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 96 * 1024,
            max_recipients: 5_000,
            max_devices_per_address: 6,
            max_queue_bytes_per_device: 1 << 30,
            ttl_ms: 30 * 24 * 3600 * 1000,
            max_page: 1_000,
            max_wait_secs: 60,
        }
    }
}

impl Limits {
    /// Largest request body of a send: the envelope plus a generous allowance for the
    /// recipient list (about 40 bytes per recipient on the wire).
    pub fn max_send_body_bytes(&self) -> usize {
        self.max_envelope_bytes + 64 * self.max_recipients + 1024
    }
}
