//! testrelay (in progress)
