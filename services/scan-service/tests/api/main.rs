//! Integration tests of the scan service against real PostgreSQL, Redis and the Pub/Sub
//! emulator. One binary; each test has its own database, Redis key prefix and topic.

mod command_line;
mod events;
mod helpers;
mod openapi;
mod rate_limit;
mod redis_failures;
mod scan;
mod shutdown;
mod timing;
