//! Who is signed in on this page.

/// A signed-in user: who, and the token that proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub token: String,
}
