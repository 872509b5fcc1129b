//! The page, one component per file.

mod account_form;
mod accounts_panel;
mod app;
mod connection_badge;
mod dashboard;
mod event_log;
mod online_list;
mod room_panel;
mod user_box;

pub use app::App;
