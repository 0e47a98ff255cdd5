//! The checkpoint's replica in S3: which local files form a consistent
//! copy (`snapshot`), the object layout and manifest format (`manifest`),
//! uploading (`replicate`), restoring (`restore`, with `staging` and
//! `fetch` doing its file and download work), the one-writer lease
//! (`lease`: the pure decisions; `fence`: taking and checking it in S3)
//! and reading a replica for `checkpoint inspect s3://…` (`inspect`).
//! Talks to S3 only through `crate::s3`; reads the local checkpoint's
//! files itself (sizes, hashes, commit caps) without depending on the
//! supervisor, which it tells about a takeover through `crate::stop`.

pub mod fence;
pub mod fetch;
pub mod inspect;
pub mod lease;
pub mod manifest;
pub mod replicate;
pub mod restore;
pub mod snapshot;
pub mod staging;
