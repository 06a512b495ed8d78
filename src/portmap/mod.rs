//! Port mapping protocols: NAT-PMP (RFC 6886) and PCP (RFC 6887) wire codecs and client
//! state machines, sans-IO.
