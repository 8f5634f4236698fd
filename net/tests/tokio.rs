//! The data test through tokio (feature `tokio`): `AsyncRead`/`AsyncWrite` on both
//! ends, both directions at once, with switches in the middle.
#![cfg(feature = "tokio")]

mod common;

use common::{builder, Pattern};
use coresident_net::{AsyncStream, Path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "current_thread")]
async fn tokio_streams_both_ways_with_switches() {
    let (b, dir) = builder("tokio");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let c = b.connect(addr).unwrap();
    let (s, _) = listener.accept().unwrap();
    assert_eq!(c.path(), Path::Ring);
    let ctl = c.try_clone().unwrap();
    let c = AsyncStream::new(c).unwrap();
    let s = AsyncStream::new(s).unwrap();
    let (cr, cw) = tokio::io::split(c);
    let (sr, sw) = tokio::io::split(s);
    let total: u64 = 32 << 20;
    let send = |mut w: tokio::io::WriteHalf<AsyncStream>,
                seed: u64,
                ctl: Option<coresident_net::Stream>| async move {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 100_000];
        let mut sent = 0u64;
        let mut i = 0;
        while sent < total {
            let n = (buf.len() as u64).min(total - sent) as usize;
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            sent += n as u64;
            i += 1;
            if let Some(c) = &ctl {
                if i % 40 == 10 {
                    c.downgrade();
                } else if i % 40 == 30 {
                    c.upgrade().unwrap();
                }
            }
        }
        w.shutdown().await.unwrap();
    };
    let recv = |mut r: tokio::io::ReadHalf<AsyncStream>, seed: u64| async move {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 77_777];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return p.offset();
            }
            p.check(&buf[..n]).expect("wrong byte");
        }
    };
    let (_, _, a, b2) = tokio::join!(
        send(cw, 1, Some(ctl)),
        send(sw, 2, None),
        recv(cr, 2),
        recv(sr, 1)
    );
    assert_eq!((a, b2), (total, total));
    let _ = std::fs::remove_dir_all(dir);
}
