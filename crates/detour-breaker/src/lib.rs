//! Circuit breakers, retry budgets and concurrency limits for Detour.
#![warn(missing_docs)]
