//! `GET /api/v1/events`: a WebSocket streaming every runtime `Event` (agent state, queue
//! changes, ended calls) as JSON text frames. A client that falls behind gets
//! `{"type":"lagged","missed":N}` and the stream goes on.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use tokio::sync::broadcast::error::RecvError;

use super::Shared;

pub async fn stream(State(state): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    let events = state.node.subscribe();
    upgrade.on_upgrade(move |socket| forward(socket, events))
}

async fn forward(
    mut socket: WebSocket,
    mut events: tokio::sync::broadcast::Receiver<actors::node::Event>,
) {
    loop {
        tokio::select! {
            event = events.recv() => {
                let text = match event {
                    Ok(event) => match serde_json::to_string(&event) {
                        Ok(text) => text,
                        Err(_) => continue,
                    },
                    Err(RecvError::Lagged(missed)) => serde_json::json!({"type": "lagged", "missed": missed}).to_string(),
                    Err(RecvError::Closed) => break,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by axum; anything else from the client is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}
