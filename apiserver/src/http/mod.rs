//! HTTP routes over the in-process API (written by the HTTP helper).
