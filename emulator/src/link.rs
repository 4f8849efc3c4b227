//! A node's session with WhatsApp's servers (the gateway stand-in). The node
//! loop says where it should be connected through a watch channel; this task
//! keeps the session and reports its state.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;

use crate::node::NodeCtx;
use crate::roles::gateway::{CONFLICT, PING_INTERVAL};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub number: String,
    pub deployment: String,
    pub shard: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Disconnected,
    Connecting,
    Connected,
}

#[derive(Deserialize)]
struct Event {
    event: String,
    #[serde(default)]
    conflict: bool,
    #[serde(default)]
    reason: String,
}

/// Sleeps for `d` unless the target changes first.
async fn pause(rx: &mut watch::Receiver<Option<Target>>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = rx.changed() => {}
    }
}

pub fn spawn(ctx: Arc<NodeCtx>) -> watch::Sender<Option<Target>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(ctx, rx));
    tx
}

async fn run(ctx: Arc<NodeCtx>, mut rx: watch::Receiver<Option<Target>>) {
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build().expect("HTTP client");
    loop {
        let target = rx.borrow_and_update().clone();
        let Some(target) = target else {
            ctx.set_link(LinkState::Disconnected);
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        ctx.set_link(LinkState::Connecting);
        let url = format!("http://{}/v1/session", ctx.cfg.gateway);
        let request = client.get(&url).query(&[
            ("number", target.number.as_str()),
            ("deployment", target.deployment.as_str()),
            ("node", ctx.id.as_str()),
            ("version", ctx.cfg.version.as_str()),
        ]);
        let response = tokio::select! {
            r = request.send() => r,
            _ = rx.changed() => continue,
        };
        let response = match response {
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                ctx.set_conflict(true);
                ctx.set_link(LinkState::Disconnected);
                pause(&mut rx, Duration::from_secs(2)).await;
                continue;
            }
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::warn!(status = %r.status(), "WhatsApp servers refused the connection");
                ctx.set_link(LinkState::Disconnected);
                pause(&mut rx, Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, gateway = %ctx.cfg.gateway, "cannot reach WhatsApp servers");
                ctx.set_link(LinkState::Disconnected);
                pause(&mut rx, Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stream = response.bytes_stream();
        let mut buf = Vec::new();
        let mut retry_after = Duration::from_secs(1);
        'session: loop {
            tokio::select! {
                _ = rx.changed() => {
                    retry_after = Duration::ZERO;
                    break 'session;
                }
                chunk = tokio::time::timeout(PING_INTERVAL * 4, stream.next()) => {
                    let bytes = match chunk {
                        Ok(Some(Ok(b))) => b,
                        Ok(Some(Err(e))) => { tracing::warn!(error = %e, "lost the connection to WhatsApp servers"); break 'session; }
                        Ok(None) => { tracing::warn!("WhatsApp servers closed the connection"); break 'session; }
                        Err(_) => { tracing::warn!("WhatsApp servers stopped answering"); break 'session; }
                    };
                    buf.extend_from_slice(&bytes);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let Ok(ev) = serde_json::from_slice::<Event>(&line) else { continue };
                        match ev.event.as_str() {
                            "connected" => {
                                ctx.set_conflict(ev.conflict);
                                ctx.set_link(LinkState::Connected);
                                tracing::info!(shard = ?target.shard, "connected to WhatsApp servers");
                            }
                            "kicked" => {
                                if ev.reason == "conflict" {
                                    ctx.set_conflict(true);
                                }
                                retry_after = Duration::from_secs(2);
                                break 'session;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        drop(stream);
        ctx.set_link(LinkState::Disconnected);
        if !retry_after.is_zero() {
            pause(&mut rx, retry_after).await;
        }
    }
}

/// Logs the conflict line; kept here so every side logs the same text.
pub fn log_conflict(node: &str) {
    tracing::error!(node = %node, "{CONFLICT}");
}
