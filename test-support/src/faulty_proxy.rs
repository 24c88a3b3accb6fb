//! A TCP proxy that can cut or slow a link on demand (there is no `tc netem` here): every
//! connection is forwarded to `upstream`; in `Drop` mode open connections are closed and new
//! ones are closed at once; in `Delay` mode every chunk waits before it is forwarded
//! (300 ms unless [`FaultyProxy::set_delay`] says otherwise).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    Delay = 1,
    Drop = 2,
}

#[derive(Debug)]
pub struct FaultyProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let delay_ms = Arc::new(AtomicU64::new(300));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (m, c, d) = (Arc::clone(&mode), Arc::clone(&conns), Arc::clone(&delay_ms));
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    continue;
                };
                if m.load(Ordering::Relaxed) == Mode::Drop as u8 {
                    drop(down);
                    continue;
                }
                let (m, d) = (Arc::clone(&m), Arc::clone(&d));
                let handle = tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::select! {
                        () = pipe(dr, uw, Arc::clone(&m), Arc::clone(&d)) => {}
                        () = pipe(ur, dw, m, d) => {}
                    }
                });
                let mut list = c.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|h| !h.is_finished());
                list.push(handle.abort_handle());
            }
        });
        Self {
            addr,
            mode,
            delay_ms,
            conns,
            task,
        }
    }

    /// How long each chunk waits in `Delay` mode.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
        if mode == Mode::Drop {
            for h in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set(Mode::Drop);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match mode.load(Ordering::Relaxed) {
            m if m == Mode::Drop as u8 => return,
            m if m == Mode::Delay as u8 => {
                tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::Relaxed))).await;
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
