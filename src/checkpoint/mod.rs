//! Checkpoint awareness: the local Structured Streaming checkpoint and its
//! replica in S3.

pub mod artifacts;
pub mod manifest;
pub mod replicate;
pub mod restore;
pub mod s3client;
pub mod s3inspect;
pub mod snapshot;
