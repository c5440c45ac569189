//! Reading SIPp's verdict on a run.

use super::SippResult;

/// SIPp 3.6 cannot wait for a BYE without gaps (its talk loop listens in slices); a BYE
/// landing between two slices is answered 200 by SIPp itself and the call "aborted" in its
/// statistics, though the SIP exchange completed. Such calls count as completed only when
/// that is the *only* error. Returns the calls completed (SIPp's successes plus those
/// artifacts), or why the run failed. Callers still check the CDRs.
pub fn completed_calls(r: &SippResult) -> Result<u64, String> {
    const ARTIFACT: &str = "Aborting call on an unexpected BYE";
    let artifacts = r.errors.lines().filter(|l| l.contains(ARTIFACT)).count() as u64;
    let other_errors = r
        .errors
        .lines()
        .any(|l| !l.trim().is_empty() && !l.contains(ARTIFACT));
    if other_errors || r.failed > artifacts || (r.exit_code != 0 && r.failed == 0) {
        return Err(format!("{r:?}"));
    }
    if artifacts > 0 {
        eprintln!(
            "{artifacts} call(s) with a BYE between SIPp listening slices (answered 200 by SIPp)"
        );
    }
    Ok(r.successful + artifacts)
}
