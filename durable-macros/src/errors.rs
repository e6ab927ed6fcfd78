//! An error accumulator: collect every problem with an item, report them together.

use std::fmt::Display;

use quote::ToTokens;

/// Collects errors; [`Errors::finish`] must be called (checked in debug builds on drop).
#[derive(Default)]
pub(crate) struct Errors {
    errors: Option<Vec<syn::Error>>,
}

impl Errors {
    pub(crate) fn new() -> Self {
        Self {
            errors: Some(Vec::new()),
        }
    }

    /// Records an error at the span of `tokens`.
    pub(crate) fn push(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push_error(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error.
    pub(crate) fn push_error(&mut self, error: syn::Error) {
        self.errors
            .as_mut()
            .expect("Errors used after finish")
            .push(error);
    }

    /// Returns all collected errors combined into one, or `Ok`.
    pub(crate) fn finish(mut self) -> syn::Result<()> {
        let errors = self.errors.take().expect("Errors finished twice");
        let mut iter = errors.into_iter();
        match iter.next() {
            None => Ok(()),
            Some(mut first) => {
                for e in iter {
                    first.combine(e);
                }
                Err(first)
            }
        }
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            debug_assert!(self.errors.is_none(), "Errors dropped without finish()");
        }
    }
}
