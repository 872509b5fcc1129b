//! Open files. Every stream holds a socket, and the process's open-file limit (not a
//! field Kubernetes has: set by the container runtime, often 1,024 soft) caps streams
//! before memory or CPU does. At start the soft limit is raised to the hard one; if that
//! still leaves less than `MAX_STREAMS` plus [`HEADROOM`], the instance says so and holds
//! fewer streams (or, with `FILE_LIMIT_STRICT`, refuses to start).

/// Files kept for everything but streams: listeners, Redis connections, requests of the
/// API, the runtime's own (epoll, eventfd), logs.
pub const HEADROOM: u64 = 512;

/// Why the instance will not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the open-file limit is {limit}: MAX_STREAMS={max_streams} needs {needed} (streams plus \
     {HEADROOM} for the rest); raise the hard limit (`ulimit -Hn`, the container runtime's \
     nofile) or lower MAX_STREAMS, or unset FILE_LIMIT_STRICT to hold fewer streams"
)]
pub struct TooFewFiles {
    pub limit: u64,
    pub max_streams: u64,
    pub needed: u64,
}

/// Raises the soft open-file limit to the hard one, and returns how many streams the
/// instance may hold: `max_streams`, or fewer if the limit does not allow it (an error
/// instead when `strict`).
pub fn fit_streams(max_streams: u64, strict: bool) -> Result<u64, TooFewFiles> {
    let limit = match raise_soft_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "could not read or raise the open-file limit; not checked");
            return Ok(max_streams);
        }
    };
    let streams = streams_within(limit, max_streams, strict)?;
    if streams < max_streams {
        tracing::warn!(
            limit,
            max_streams,
            holding = streams,
            "the open-file limit is too low for MAX_STREAMS: holding fewer streams (raise \
             the hard limit, or set FILE_LIMIT_STRICT=true to refuse to start instead)"
        );
    } else {
        tracing::info!(limit, max_streams, "open-file limit");
    }
    Ok(streams)
}

/// The soft open-file limit once raised to the hard one.
fn raise_soft_limit() -> std::io::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok(rlimit::Resource::NOFILE.get()?.0)
}

/// How many streams fit in `limit` open files, at most `max_streams`.
fn streams_within(limit: u64, max_streams: u64, strict: bool) -> Result<u64, TooFewFiles> {
    let needed = max_streams.saturating_add(HEADROOM);
    if limit >= needed {
        return Ok(max_streams);
    }
    let fits = limit.saturating_sub(HEADROOM);
    if strict || fits == 0 {
        return Err(TooFewFiles {
            limit,
            max_streams,
            needed,
        });
    }
    Ok(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_fit_the_files_left_after_the_headroom() {
        assert_eq!(streams_within(1_000_000, 20_000, false), Ok(20_000));
        assert_eq!(streams_within(20_512, 20_000, true), Ok(20_000));
        assert_eq!(streams_within(20_000, 20_000, false), Ok(20_000 - HEADROOM));
        assert_eq!(
            streams_within(20_000, 20_000, true),
            Err(TooFewFiles {
                limit: 20_000,
                max_streams: 20_000,
                needed: 20_000 + HEADROOM
            })
        );
        assert!(
            streams_within(HEADROOM, 10, false).is_err(),
            "no room for any stream"
        );
        assert_eq!(streams_within(u64::MAX, u64::MAX, true), Ok(u64::MAX));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_soft_limit().expect("the limit can be read");
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("read again");
        assert_eq!((limit, soft), (hard, hard));
    }
}
