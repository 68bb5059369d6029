//! Backend sets, selection algorithms, failover tiers and discovery for Detour.
#![warn(missing_docs)]
