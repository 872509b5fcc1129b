//! What the two carriers of a stream share (the direct one, `direct`, and actix-web's,
//! `routes::stream`): the request as each reads it, and how it opens. A rule about a
//! stream request is written here once, so that both carriers keep it.

use std::sync::Arc;

use actix_web::{HttpRequest, http::header};
use futures_util::Stream;
use tokio::net::TcpStream;

use crate::{
    delivery::{self, Naming},
    error::ApiError,
    hub::{CarrierEnd, Frame, ShardId},
    routes::extract,
    state::AppState,
    tickets, topics,
};

/// A stream request: what either carrier reads from its head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRequest {
    /// The query string, without its `?`.
    pub query: String,
    /// `Some("")` when present but not text.
    pub authorization: Option<String>,
    pub last_event_id: Option<String>,
    /// Every `Cookie` header, joined with `; `.
    pub cookies: Option<String>,
}

impl StreamRequest {
    /// The stream request actix-web parsed.
    pub fn of(req: &HttpRequest) -> Self {
        let text = |name| {
            req.headers()
                .get(name)
                .map(|value| value.to_str().unwrap_or_default().to_string())
        };
        let cookies: Vec<&str> = req
            .headers()
            .get_all(header::COOKIE)
            .filter_map(|value| value.to_str().ok())
            .collect();
        Self {
            query: req.query_string().to_string(),
            authorization: extract::authorization(req).map(str::to_string),
            last_event_id: text("last-event-id"),
            cookies: (!cookies.is_empty()).then(|| cookies.join("; ")),
        }
    }

    /// Adds one `Cookie` header's value.
    pub fn add_cookies(&mut self, cookies: &str) {
        self.cookies = Some(match self.cookies.take() {
            Some(before) => format!("{before}; {cookies}"),
            None => cookies.to_string(),
        });
    }

    /// Authenticates the request (a bearer token, or a stream ticket with its cookie),
    /// checks the topics it asks for (`topic`, repeated) against what the user may have,
    /// and opens its stream, resuming where it asks; served straight off `socket` when
    /// given.
    pub async fn open(
        &self,
        state: &AppState,
        socket: Option<(Arc<TcpStream>, ShardId)>,
    ) -> Result<(impl Stream<Item = Frame> + use<>, CarrierEnd), ApiError> {
        let limit = usize::try_from(state.limits.max_topics_per_stream).unwrap_or(usize::MAX);
        // Checked before a ticket is spent: a bad URL must not cost the page its ticket.
        let asked = topics::named(crate::query::params(&self.query, "topic"), limit)?;
        let (credential, ticket_topics) = tickets::authenticate_stream(
            &state.tokens,
            &state.tickets,
            self.authorization.as_deref(),
            &self.query,
            self.cookies.as_deref(),
        )
        .await?;
        let topics = topics::named(ticket_topics.into_iter().chain(asked), limit)?;
        state.topics.authorize(&credential, &topics).await?;
        let resume_from = delivery::resume_point(self.last_event_id.as_deref(), &self.query);
        let naming = Naming::from_query(&self.query);
        let opened = delivery::open(
            &state.streams,
            credential,
            topics,
            resume_from,
            naming,
            socket,
        );
        Ok(opened.await?)
    }
}
