//! The browser side of sharing one stream between tabs: a Web Lock elects the tab that
//! holds the stream, and a `BroadcastChannel` carries its frames and status to the others.
//!
//! The lock is held for as long as a promise of ours stays pending; the browser grants it
//! to the next tab in line the moment the holder resolves that promise or its tab goes
//! away (closed, crashed, navigated), so no heartbeat is needed to notice a dead holder.
//! web-sys marks its `LockManager` unstable, so `navigator.locks` is reached through
//! `Reflect`.

use std::{cell::RefCell, rc::Rc};

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, BroadcastChannel, MessageEvent};

use super::sharing::TabMessage;

/// One tab's seat among the tabs sharing a stream.
pub(super) struct Leadership {
    name: String,
    channel: BroadcastChannel,
    /// Kept alive as long as the channel may call it.
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    /// Called by the browser when the lock is granted; returns the promise it is held by.
    on_granted: Closure<dyn FnMut(JsValue) -> JsValue>,
    /// Resolves the promise the lock is held by: calling it hands the stream on.
    release: Rc<RefCell<Option<Function>>>,
    /// Withdraws a request still waiting in line.
    waiting: RefCell<Option<AbortController>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("holds", &self.release.borrow().is_some())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Joins the tabs that share `name` and gets in line for the stream: `on_lead` runs
    /// when this tab is given it, `on_message` for each message another tab posts.
    /// `None` where the browser has no Web Locks or no `BroadcastChannel`.
    pub fn join(
        name: &str,
        on_lead: impl Fn() + 'static,
        on_message: impl Fn(TabMessage) + 'static,
    ) -> Option<Self> {
        lock_manager()?;
        let channel = BroadcastChannel::new(name).ok()?;
        let listener = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            if let Some(message) = event
                .data()
                .as_string()
                .and_then(|t| TabMessage::decode(&t))
            {
                on_message(message);
            }
        });
        channel.set_onmessage(Some(listener.as_ref().unchecked_ref()));
        let release = Rc::new(RefCell::new(None));
        let on_granted = {
            let release = release.clone();
            Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |_lock: JsValue| {
                let held = Promise::new(&mut |resolve, _reject| {
                    *release.borrow_mut() = Some(resolve);
                });
                on_lead();
                held.into()
            })
        };
        let leadership = Self {
            name: name.to_string(),
            channel,
            _on_message: listener,
            on_granted,
            release,
            waiting: RefCell::new(None),
        };
        leadership.get_in_line();
        Some(leadership)
    }

    /// Asks for the lock; the browser calls `on_lead` once it is this tab's turn.
    pub fn get_in_line(&self) {
        let Some(locks) = lock_manager() else {
            return;
        };
        let Ok(abort) = AbortController::new() else {
            return;
        };
        let options = Object::new();
        let _ = Reflect::set(&options, &"signal".into(), &abort.signal());
        let request = Reflect::get(&locks, &"request".into())
            .ok()
            .and_then(|request| request.dyn_into::<Function>().ok());
        let Some(request) = request else {
            return;
        };
        let requested = request.call3(
            &locks,
            &JsValue::from_str(&self.name),
            &options,
            self.on_granted.as_ref(),
        );
        if let Ok(promise) = requested.and_then(|p| p.dyn_into::<Promise>()) {
            // Settles when the lock is released, or rejects when the request is withdrawn:
            // awaited only so that a withdrawal is not reported as an unhandled rejection.
            leptos::task::spawn_local(async move {
                let _ = JsFuture::from(promise).await;
            });
        }
        *self.waiting.borrow_mut() = Some(abort);
    }

    pub fn post(&self, message: &TabMessage) {
        let _ = self
            .channel
            .post_message(&JsValue::from_str(&message.encode()));
    }

    /// Hands the stream to the next tab in line, if this tab holds it.
    pub fn resign(&self) {
        if let Some(resolve) = self.release.borrow_mut().take() {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        }
    }

    /// Leaves for good: out of the line, the stream handed on, the channel closed. Safe to
    /// call from inside `on_message` (nothing is freed until `self` is dropped).
    pub fn leave(&self) {
        if let Some(waiting) = self.waiting.borrow_mut().take() {
            waiting.abort();
        }
        self.resign();
        self.channel.set_onmessage(None);
        self.channel.close();
    }
}

/// `navigator.locks`, where the browser has it (secure contexts: https and localhost).
fn lock_manager() -> Option<JsValue> {
    let navigator = web_sys::window()?.navigator();
    let locks = Reflect::get(&navigator, &"locks".into()).ok()?;
    (!locks.is_undefined() && !locks.is_null()).then_some(locks)
}
