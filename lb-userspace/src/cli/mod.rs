//! Operator commands that read the pinned maps: services, trace, check, stats.
