//! Where `use_events` gets the token it asks stream tickets with.

use std::{future::Future, pin::Pin, rc::Rc};

type Fetch = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>>>>>;

/// The credential behind a stream: a token given once, or a source the hook asks for a
/// fresh one whenever the one it has expires (`stream.expired`) or is refused (a 401 for
/// a ticket).
#[derive(Clone)]
pub enum Credentials {
    /// One token for the hook's life: once it is refused or expires the stream closes for
    /// good (retrying a credential known to be dead would only loop).
    Fixed(String),
    /// Asked for a token before the first stream, and again after each expiry or refusal;
    /// a failure is shown and retried with the reconnection backoff.
    Renewing(Fetch),
}

impl Credentials {
    /// A source of fresh tokens: `fetch` is awaited whenever a token is needed.
    pub fn renewing<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = Result<String, String>> + 'static,
    {
        Self::Renewing(Rc::new(move || Box::pin(fetch())))
    }

    pub(super) fn renews(&self) -> bool {
        matches!(self, Self::Renewing(_))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.write_str(match self {
            Self::Fixed(_) => "Credentials::Fixed(..)",
            Self::Renewing(_) => "Credentials::Renewing(..)",
        })
    }
}

impl From<String> for Credentials {
    fn from(token: String) -> Self {
        Self::Fixed(token)
    }
}

impl From<&str> for Credentials {
    fn from(token: &str) -> Self {
        Self::Fixed(token.to_string())
    }
}
