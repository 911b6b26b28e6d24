//! Integration tests: real PostgreSQL, real servers, real clients. One binary, many modules.

mod support;

mod feed;
mod protocol;
mod rest;
