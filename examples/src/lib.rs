//! The six durable patterns.
