//! Network tools for fault tests: a TCP proxy that can be cut, and a raw AMQP publisher.

use std::sync::Arc;

use super::amqp_url;

/// A TCP proxy to RabbitMQ that a test can cut and restore, making the broker unreachable for
/// one worker without touching anyone else's connections.
pub struct CuttableProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(target: &str) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2, target) = (up.clone(), conns.clone(), target.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        CuttableProxy { port, up, conns, accept }
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// properties whose bytes are not UTF-8 (RabbitMQ passes them on as they are). Publishes one
/// message to `queue` on the default exchange and closes the channel, so the broker has routed it
/// when this returns.
/// A minimal AMQP 0-9-1 publisher over a raw socket, for what a well-behaved client cannot send:
/// properties whose bytes are not UTF-8 (RabbitMQ passes them on as they are). Publishes one
/// message to `queue` on the default exchange and closes the channel, so the broker has routed it
/// when this returns.
pub async fn publish_raw(queue: &str, content_type: &[u8], header_key: Option<&[u8]>, body: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn frame(s: &mut tokio::net::TcpStream, kind: u8, channel: u16, payload: &[u8]) {
        let mut f = vec![kind];
        f.extend(channel.to_be_bytes());
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(0xCE);
        s.write_all(&f).await.expect("write frame");
    }
    async fn read_method(s: &mut tokio::net::TcpStream) -> (u16, u16, Vec<u8>) {
        loop {
            let mut head = [0u8; 7];
            s.read_exact(&mut head).await.expect("frame header");
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            s.read_exact(&mut payload).await.expect("frame payload");
            if head[0] == 1 {
                let class = u16::from_be_bytes([payload[0], payload[1]]);
                let method = u16::from_be_bytes([payload[2], payload[3]]);
                return (class, method, payload[4..size].to_vec());
            }
        }
    }
    fn method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
        let mut p = class.to_be_bytes().to_vec();
        p.extend(method.to_be_bytes());
        p.extend(args);
        p
    }
    fn short(s: &[u8]) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend(s);
        v
    }
    let url = url::Url::parse(&amqp_url()).expect("AMQP URL");
    let addr = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5672));
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to RabbitMQ");
    s.write_all(b"AMQP\x00\x00\x09\x01").await.expect("protocol header");
    assert_eq!(read_method(&mut s).await.0, 10, "connection.start");
    let user = url.username();
    let password = url.password().unwrap_or("guest");
    let response = format!("\0{user}\0{password}");
    let mut start_ok = 0u32.to_be_bytes().to_vec(); // no client properties
    start_ok.extend(short(b"PLAIN"));
    start_ok.extend((response.len() as u32).to_be_bytes());
    start_ok.extend(response.as_bytes());
    start_ok.extend(short(b"en_US"));
    frame(&mut s, 1, 0, &method(10, 11, &start_ok)).await;
    let (_, _, tune) = read_method(&mut s).await;
    let mut tune_ok = tune[..2].to_vec(); // channel-max as offered
    tune_ok.extend(131_072u32.to_be_bytes());
    tune_ok.extend(0u16.to_be_bytes()); // no heartbeats
    frame(&mut s, 1, 0, &method(10, 31, &tune_ok)).await;
    let vhost =
        percent_encoding::percent_decode_str(url.path().trim_start_matches('/')).decode_utf8_lossy().into_owned();
    let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };
    let mut open = short(vhost.as_bytes());
    open.extend(short(b""));
    open.push(0);
    frame(&mut s, 1, 0, &method(10, 40, &open)).await;
    assert_eq!(read_method(&mut s).await.1, 41, "connection.open-ok");
    frame(&mut s, 1, 1, &method(20, 10, &short(b""))).await;
    assert_eq!(read_method(&mut s).await.1, 11, "channel.open-ok");
    let mut publish = 0u16.to_be_bytes().to_vec();
    publish.extend(short(b""));
    publish.extend(short(queue.as_bytes()));
    publish.push(0);
    frame(&mut s, 1, 1, &method(60, 40, &publish)).await;
    // Content header: class, weight, body size, property flags, then the set properties in order.
    let mut header = 60u16.to_be_bytes().to_vec();
    header.extend(0u16.to_be_bytes());
    header.extend((body.len() as u64).to_be_bytes());
    let mut flags = 0x8000u16; // content-type
    let mut props = short(content_type);
    if let Some(key) = header_key {
        flags |= 0x2000; // headers
        let mut table = short(key);
        table.push(b'S');
        table.extend(1u32.to_be_bytes());
        table.push(b'v');
        props.extend((table.len() as u32).to_be_bytes());
        props.extend(table);
    }
    header.extend(flags.to_be_bytes());
    header.extend(props);
    frame(&mut s, 2, 1, &header).await;
    frame(&mut s, 3, 1, body).await;
    // channel.close: its close-ok comes after the publish has been routed.
    let mut close = 200u16.to_be_bytes().to_vec();
    close.extend(short(b"done"));
    close.extend([0, 0, 0, 0]);
    frame(&mut s, 1, 1, &method(20, 40, &close)).await;
    assert_eq!(read_method(&mut s).await.1, 41, "channel.close-ok");
}
