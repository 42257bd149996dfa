// Copyright (c) 2023 Doug Hoyte
// Copyright (c) 2023 Yuki Kishimoto
// Distributed under the MIT software license

/// Implemented protocol version
pub const PROTOCOL_VERSION: u64 = 0x61; // Version 1

/// ID Size
pub const ID_SIZE: usize = 32;

/// Fingerprint Size
pub const FINGERPRINT_SIZE: usize = 16;
