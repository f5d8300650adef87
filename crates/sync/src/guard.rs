//! Running yrs on untrusted input without letting a panic out.
//!
//! Some malformed inputs make yrs panic (an assertion on a client id wider
//! than 53 bits, for one) rather than return an error. [`guarded`] turns
//! such a panic into an `Err` with its message, so the caller can refuse the
//! input and log it as what it is. [`install_panic_hook`] keeps the default
//! hook from also printing those caught panics as if the process had
//! crashed; panics anywhere else are printed as before.
//!
//! A panic inside a yrs transaction must not unwind through its commit:
//! dropping a `TransactionMut` commits it, which runs yrs' cleanup over
//! whatever the panic left half done, and a second panic there, while the
//! first unwinds, aborts the whole process. [`with_txn`] is the one place
//! a read-write transaction is opened on a document yrs may panic on: it
//! commits only when its work returns normally.

use std::any::Any;
use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};

use yrs::{Doc, Transact, TransactionMut};

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it comes back as `Err(message)`.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| message(payload.as_ref()))
}

/// Runs `work` in a read-write transaction of `doc` and commits it when
/// `work` returns. If `work` panics, the transaction is never committed (or
/// dropped): it is leaked with the document, which is then unusable, so
/// the caller, running this under [`guarded`], treats the document as
/// lost (a room reloads it from disk; a throwaway one is dropped).
pub(crate) fn with_txn<T>(doc: &Doc, work: impl FnOnce(&mut TransactionMut<'_>) -> T) -> T {
    let mut txn = ManuallyDrop::new(doc.transact_mut());
    let result = work(&mut txn);
    drop(ManuallyDrop::into_inner(txn));
    result
}

/// Installs a panic hook that stays quiet about panics [`guarded`] catches.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !GUARDED.with(Cell::get) {
            default(info);
        }
    }));
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(guarded(|| 7), Ok(7));
        let err = guarded(|| -> u8 { panic!("bad input {}", 3) }).expect_err("caught");
        assert_eq!(err, "bad input 3");
        // Nested guards restore the outer state.
        let inner = guarded(|| guarded(|| -> () { panic!("inner") }));
        assert_eq!(inner, Ok(Err("inner".to_owned())));
    }

    #[test]
    fn a_transaction_commits_only_when_its_work_returns() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use yrs::{GetString, Text};

        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let commits = Arc::new(AtomicUsize::new(0));
        let seen = commits.clone();
        doc.observe_update_v1("count", move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .expect("observes");
        let inserted = guarded(|| with_txn(&doc, |txn| text.insert(txn, 0, "kept")));
        assert_eq!(inserted, Ok(()));
        assert_eq!(commits.load(Ordering::SeqCst), 1);
        assert_eq!(text.get_string(&doc.transact()), "kept");

        let panicked = guarded(|| {
            with_txn(&doc, |txn| {
                text.insert(txn, 0, "lost");
                panic!("inside yrs")
            })
        });
        assert_eq!(panicked, Err("inside yrs".to_owned()));
        assert_eq!(
            commits.load(Ordering::SeqCst),
            1,
            "the transaction was not committed while the panic unwound"
        );
    }
}
