//! Two tiny single-shard primitives the RPC tasks use: a one-shot reply slot and a wake-one notify.
//! Both are `Rc`/`Cell` based: they never cross shards.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct SlotState<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
}

/// Creates a reply slot: the sender fills it once; the receiver resolves to `None` if the sender
/// was dropped without sending.
pub(crate) fn reply_slot<T>() -> (SlotSender<T>, SlotReceiver<T>) {
    let state = Rc::new(RefCell::new(SlotState {
        value: None,
        waker: None,
        sender_gone: false,
    }));
    (
        SlotSender {
            state: state.clone(),
        },
        SlotReceiver { state },
    )
}

pub(crate) struct SlotSender<T> {
    state: Rc<RefCell<SlotState<T>>>,
}

impl<T> SlotSender<T> {
    pub(crate) fn send(self, value: T) {
        self.state.borrow_mut().value = Some(value);
        // Drop wakes the receiver.
    }
}

impl<T> Drop for SlotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.state.borrow_mut();
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

pub(crate) struct SlotReceiver<T> {
    state: Rc<RefCell<SlotState<T>>>,
}

impl<T> Future for SlotReceiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.state.borrow_mut();
        if let Some(value) = state.value.take() {
            return Poll::Ready(Some(value));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Wakes one waiting task; a notify with nobody waiting is remembered until the next wait.
#[derive(Default)]
pub(crate) struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub(crate) async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
