//! Integration tests: real PostgreSQL, real servers, real clients. One binary, many modules.

mod support;

mod auth;
mod cli;
mod faults;
mod feed;
mod ops;
mod protocol;
