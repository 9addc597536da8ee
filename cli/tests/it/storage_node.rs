//! The storage node against real S3 clients, Haven's own client and repository code,
//! TLS, several data directories, faults and object lock.

mod awscli;
mod batch;
mod client_errors;
mod clients;
mod data_dirs;
mod faults;
mod least_privilege;
mod placement;
mod protect;
mod repository;
mod s3_api;
mod slow_clients;
mod tls;
