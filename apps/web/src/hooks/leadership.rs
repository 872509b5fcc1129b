//! The browser side of sharing one stream between tabs: the tabs elect the one that holds
//! the stream, and a `BroadcastChannel` carries its frames and status to the others.
//!
//! Where the browser has Web Locks, the election is a lock: held for as long as a promise
//! of ours stays pending, and granted to the next tab in line the moment the holder
//! resolves it or its tab goes away (closed, crashed, navigated), so no heartbeat is
//! needed to notice a dead holder. web-sys marks its `LockManager` unstable, so
//! `navigator.locks` is reached through `Reflect`. Where it is missing (plain `http://`
//! away from localhost), the tabs hold the `sharing::Election` on the channel itself:
//! claims as a heartbeat, and a resignation on `pagehide`.

use std::{cell::RefCell, rc::Rc, time::Duration};

use js_sys::{Function, Object, Promise, Reflect};
use leptos::prelude::{IntervalHandle, set_interval_with_handle};
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, BroadcastChannel, MessageEvent};

use super::sharing::{Election, TabMessage, Verdict};

/// How often the fallback election looks at the clock.
const ELECTION_TICK: Duration = Duration::from_millis(250);

type Listener = Closure<dyn FnMut(web_sys::Event)>;

/// One tab's seat among the tabs sharing a stream.
pub(super) struct Leadership {
    name: String,
    channel: BroadcastChannel,
    /// Kept alive as long as the channel may call it.
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    seat: Seat,
}

/// How this tab takes part in the election.
enum Seat {
    /// Web Locks.
    Lock {
        /// Called by the browser when the lock is granted; returns the promise the lock
        /// is held by.
        on_granted: Closure<dyn FnMut(JsValue) -> JsValue>,
        /// Resolves the promise the lock is held by: calling it hands the stream on.
        release: Rc<RefCell<Option<Function>>>,
        /// Withdraws a request still waiting in line.
        waiting: RefCell<Option<AbortController>>,
    },
    /// The fallback election, over the channel.
    Channel {
        election: Rc<RefCell<Election>>,
        ticks: Option<IntervalHandle>,
        /// The window's `pagehide` listener: a holder resigns as its page goes.
        on_pagehide: Listener,
    },
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (election, holds) = match &self.seat {
            Seat::Lock { release, .. } => ("lock", release.borrow().is_some()),
            Seat::Channel { election, .. } => ("channel", election.borrow().holds()),
        };
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("election", &election)
            .field("holds", &holds)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Joins the tabs that share `name` and gets in line for the stream: `on_lead` runs
    /// when this tab is given it, `on_step_down` when another tab took it over (only in
    /// the fallback election), and `on_message` for each message another tab posts.
    /// `None` where the browser has no `BroadcastChannel`.
    pub fn join(
        name: &str,
        on_lead: impl Fn() + 'static,
        on_step_down: impl Fn() + 'static,
        on_message: impl Fn(TabMessage) + 'static,
    ) -> Option<Self> {
        let channel = BroadcastChannel::new(name).ok()?;
        let on_lead: Rc<dyn Fn()> = Rc::new(on_lead);
        let mut election = None;
        let seat = if lock_manager().is_some() {
            lock_seat(on_lead.clone())
        } else {
            let tab = (js_sys::Math::random() * 9_007_199_254_740_991.0) as u64;
            let shared = Rc::new(RefCell::new(Election::new(tab, js_sys::Date::now())));
            election = Some(shared.clone());
            channel_seat(&channel, shared, on_lead.clone())
        };
        let replies = channel.clone();
        let listener = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let Some(message) = event
                .data()
                .as_string()
                .and_then(|t| TabMessage::decode(&t))
            else {
                return;
            };
            if let Some(election) = &election {
                // Decided, and the borrow dropped, before calling out: the callbacks come
                // back here (resign, get in line).
                let now = js_sys::Date::now();
                if message == TabMessage::Hello {
                    let answer = election.borrow_mut().answer_hello(now);
                    if let Some(claim) = answer {
                        post(&replies, &claim);
                    }
                }
                let verdict = election.borrow_mut().heard(&message, now);
                match verdict {
                    Verdict::Lead => take_the_stream(&replies, election, on_lead.as_ref()),
                    Verdict::StepDown => on_step_down(),
                    Verdict::Wait => {}
                }
            }
            on_message(message);
        });
        channel.set_onmessage(Some(listener.as_ref().unchecked_ref()));
        let leadership = Self {
            name: name.to_string(),
            channel,
            _on_message: listener,
            seat,
        };
        leadership.get_in_line();
        Some(leadership)
    }

    /// Gets in line for the stream: the browser calls `on_lead` once it is this tab's
    /// turn. In the fallback election a tab is always in line while it does not hold.
    pub fn get_in_line(&self) {
        let Seat::Lock {
            on_granted,
            waiting,
            ..
        } = &self.seat
        else {
            return;
        };
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
            on_granted.as_ref(),
        );
        if let Ok(promise) = requested.and_then(|p| p.dyn_into::<Promise>()) {
            // Settles when the lock is released, or rejects when the request is withdrawn:
            // awaited only so that a withdrawal is not reported as an unhandled rejection.
            leptos::task::spawn_local(async move {
                let _ = JsFuture::from(promise).await;
            });
        }
        *waiting.borrow_mut() = Some(abort);
    }

    pub fn post(&self, message: &TabMessage) {
        post(&self.channel, message);
    }

    /// Hands the stream to the next tab in line, if this tab holds it.
    pub fn resign(&self) {
        match &self.seat {
            Seat::Lock { release, .. } => {
                if let Some(resolve) = release.borrow_mut().take() {
                    let _ = resolve.call0(&JsValue::UNDEFINED);
                }
            }
            Seat::Channel { election, .. } => {
                let resignation = election.borrow_mut().resign(js_sys::Date::now());
                if let Some(resignation) = resignation {
                    self.post(&resignation);
                }
            }
        }
    }

    /// Leaves for good: out of the line, the stream handed on, the channel closed. Safe to
    /// call from inside `on_message` (nothing is freed until `self` is dropped).
    pub fn leave(&self) {
        self.resign();
        match &self.seat {
            Seat::Lock { waiting, .. } => {
                if let Some(waiting) = waiting.borrow_mut().take() {
                    waiting.abort();
                }
            }
            Seat::Channel {
                ticks, on_pagehide, ..
            } => {
                if let Some(ticks) = ticks {
                    ticks.clear();
                }
                if let Some(window) = web_sys::window() {
                    let _ = window.remove_event_listener_with_callback(
                        "pagehide",
                        on_pagehide.as_ref().unchecked_ref(),
                    );
                }
            }
        }
        self.channel.set_onmessage(None);
        self.channel.close();
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // The interval and the window listener would outlive the seat otherwise.
        if let Seat::Channel { ticks, .. } = &self.seat
            && let Some(ticks) = ticks
        {
            ticks.clear();
        }
    }
}

fn lock_seat(on_lead: Rc<dyn Fn()>) -> Seat {
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
    Seat::Lock {
        on_granted,
        release,
        waiting: RefCell::new(None),
    }
}

fn channel_seat(
    channel: &BroadcastChannel,
    election: Rc<RefCell<Election>>,
    on_lead: Rc<dyn Fn()>,
) -> Seat {
    let ticks = {
        let (channel, election) = (channel.clone(), election.clone());
        set_interval_with_handle(
            move || {
                let now = js_sys::Date::now();
                let verdict = election.borrow_mut().tick(now);
                if verdict == Verdict::Lead {
                    take_the_stream(&channel, &election, on_lead.as_ref());
                } else if let Some(claim) = election.borrow_mut().claim(now) {
                    post(&channel, &claim);
                }
            },
            ELECTION_TICK,
        )
        .ok()
    };
    let on_pagehide = {
        let (channel, election) = (channel.clone(), election.clone());
        Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            let resignation = election.borrow_mut().resign(js_sys::Date::now());
            if let Some(resignation) = resignation {
                post(&channel, &resignation);
            }
        })
    };
    if let Some(window) = web_sys::window() {
        let _ = window
            .add_event_listener_with_callback("pagehide", on_pagehide.as_ref().unchecked_ref());
    }
    Seat::Channel {
        election,
        ticks,
        on_pagehide,
    }
}

/// The fallback election gave this tab the stream: it says so at once, then opens it.
fn take_the_stream(channel: &BroadcastChannel, election: &RefCell<Election>, on_lead: &dyn Fn()) {
    let claim = election.borrow_mut().claim(js_sys::Date::now());
    if let Some(claim) = claim {
        post(channel, &claim);
    }
    on_lead();
}

fn post(channel: &BroadcastChannel, message: &TabMessage) {
    let _ = channel.post_message(&JsValue::from_str(&message.encode()));
}

/// `navigator.locks`, where the browser has it (secure contexts: https and localhost).
fn lock_manager() -> Option<JsValue> {
    let navigator = web_sys::window()?.navigator();
    let locks = Reflect::get(&navigator, &"locks".into()).ok()?;
    (!locks.is_undefined() && !locks.is_null()).then_some(locks)
}
