//! gen (in progress)
