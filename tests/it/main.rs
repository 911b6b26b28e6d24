//! Integration tests: real PostgreSQL, real servers, real clients. One binary, many modules.

mod support;

mod admin;
mod attack_capture;
mod attack_conn;
mod attack_edge;
mod attack_files;
mod attack_streams;
mod auth;
mod browser;
mod cli;
mod faults;
mod feed;
mod fuzz;
mod ops;
mod poll;
mod protocol;
mod rest;
mod sse;
mod tail;
