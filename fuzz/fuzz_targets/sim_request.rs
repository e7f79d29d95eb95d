//! Any HTTP request to the simulator's vendor endpoint (method, query string, headers, body):
//! handling it never panics. Input layout: a method byte, then query, header lines and body
//! separated by 0xFF bytes; header lines are `name: value`.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use bouncer::config::Config;
use bouncer_sim::{self as sim, Sim, SimSettings};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const CONFIG: &str = r#"
[[zego]]
app_id = 1234567890
server_secret = "abcdefghijklmnopqrstuvwxyz012345"
forbid_rules = true
[[trtc]]
sdk_app_id = 1400000001
secret_id = "AKIDfuzz"
secret_key = "fuzzkey"
region = "ap-guangzhou"
"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fn simulator() -> Arc<Sim> {
    static SIM: OnceLock<Arc<Sim>> = OnceLock::new();
    SIM.get_or_init(|| {
        let config = Config::from_toml(CONFIG).expect("fuzz config");
        Arc::new(Sim::new(SimSettings { zego: config.zego, trtc: config.trtc, zego_rate: 50, trtc_rate: 20, callback_url: None }))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&method, rest)) = data.split_first() else { return };
    let mut parts = rest.split(|b| *b == 0xFF);
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let headers = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default().to_vec();
    let method = ["GET", "POST", "PUT", "DELETE"][usize::from(method % 4)];
    let mut request = axum::http::Request::builder().method(method);
    let uri = format!("/?{}", query.replace(|c: char| c.is_whitespace() || c.is_control() || c == '#', ""));
    request = request.uri(uri.as_str());
    for line in headers.lines() {
        if let Some((name, value)) = line.split_once(':') {
            request = request.header(name.trim(), value.trim());
        }
    }
    // A request the HTTP layer itself would refuse never reaches the simulator.
    let Ok(request) = request.body(Body::from(body)) else { return };
    let _ = runtime().block_on(sim::router(simulator()).oneshot(request));
});
