//! Integration tests: real PostgreSQL, real servers, real clients. One binary, many modules.

mod support;

mod admin;
mod attack_capture;
mod attack_conn;
mod attack_edge;
mod attack_files;
mod attack_streams;
mod auth;
mod bench;
mod browser;
mod capture;
mod capture_bulk;
mod cli;
mod delivery;
mod failover;
mod faults;
mod fuzz;
mod listener;
mod ops;
mod ordering;
mod poll;
mod protocol;
mod replica;
mod rest_files;
mod rest_messages;
mod rest_schema;
mod rest_studies;
mod resume;
mod snapshot;
mod socketio;
mod sse;
mod tail;
mod views;
mod views_indexes;
mod views_values;
