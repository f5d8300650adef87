//! Running yrs on untrusted input without letting a panic out.
//!
//! Some malformed inputs make yrs panic (an assertion on a client id wider
//! than 53 bits, for one) rather than return an error. [`guarded`] turns
//! such a panic into an `Err` with its message, so the caller can refuse the
//! input and log it as what it is. [`install_panic_hook`] keeps the default
//! hook from also printing those caught panics as if the process had
//! crashed; panics anywhere else are printed as before.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it comes back as `Err(message)`.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| message(payload.as_ref()))
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
}
