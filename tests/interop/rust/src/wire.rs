//! p2pchat's wire formats and the pubsub message, as prost generates them from the .proto
//! files (build.rs).

#![allow(dead_code)] // the generated code has more than the peer uses

pub mod chat {
    include!(concat!(env!("OUT_DIR"), "/p2pchat.chat.v1.rs"));
}

pub mod store {
    include!(concat!(env!("OUT_DIR"), "/p2pchat.store.v1.rs"));
}

pub mod pubsub {
    include!(concat!(env!("OUT_DIR"), "/pubsub.rs"));
}
