//! The storage node against real S3 clients, Haven's own client and repository code,
//! TLS, several data directories, faults and object lock.

mod awscli;
mod batch;
mod clients;
mod data_dirs;
mod faults;
mod protect;
mod repository;
mod tls;
