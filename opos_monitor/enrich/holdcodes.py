"""HTCondor hold and vacate reason codes, as data.

The names and numbers are HTCondor's own: the ``CONDOR_HOLD_CODE`` enum in
``src/condor_utils/condor_holdcodes.h`` (read from the 25.14.1 build of
``libcondor_utils`` shipped in the ``htcondor`` wheel, which carries codes
0-49 and vacate codes 1000-1037) and the manual's tables
``docs/codes-other-values/hold-table.rst`` and ``vacate-code-table.rst``.

What is ours is the second half of each row: the *default* failure category a
shifter should see for the code, and whether the code is a catch-all whose
reason text (or subcode) must decide the category.  The classifier rules in
``rules.toml`` refine these defaults; :func:`default_category` is the fallback
and the test suite checks that every code here has a sane default.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

__all__ = [
    "HoldCode",
    "HOLD_CODES",
    "VACATE_BASE",
    "SUBCODES",
    "USER_HOLD_CODES",
    "TEXT_DECIDES",
    "lookup",
    "code_name",
    "default_category",
    "describe",
]

VACATE_BASE = 1000


@dataclass(frozen=True, slots=True)
class HoldCode:
    """One row of the hold/vacate code table."""

    code: int
    name: str  # HTCondor's enum label (also the NumHoldsByReason key)
    category: str  # default opos category
    text_decides: bool  # catch-all: the reason text / subcode decides
    meaning: str  # short paraphrase of HTCondor's description

    @property
    def is_vacate(self) -> bool:
        return self.code >= VACATE_BASE


def _row(code: int, name: str, category: str, text_decides: bool, meaning: str) -> HoldCode:
    return HoldCode(code, name, category, text_decides, meaning)


_ROWS = (
    # ---- hold codes (HoldReasonCode) -------------------------------------
    _row(0, "Unspecified", "unknown", True, "no specific hold code was set"),
    _row(1, "UserRequest", "user", False, "held with condor_hold"),
    _row(2, "GlobusGramError", "site", False, "grid (GRAM) error; subcode is the GRAM error"),
    _row(3, "JobPolicy", "policy", True, "PERIODIC_HOLD or ON_EXIT_HOLD was true; reason/subcode user-provided"),
    _row(4, "CorruptedCredential", "certificate", False, "job credentials invalid or unavailable"),
    _row(5, "JobPolicyUndefined", "policy", False, "a job policy expression evaluated to UNDEFINED"),
    _row(6, "FailedToCreateProcess", "code", True, "starter failed to start the executable; subcode is errno"),
    _row(7, "UnableToOpenOutput", "site", False, "stdout file could not be opened; subcode is errno"),
    _row(8, "UnableToOpenInput", "transfer", False, "stdin file could not be opened; subcode is errno"),
    _row(9, "UnableToOpenOutputStream", "site", False, "stdout stream could not be opened; subcode is errno"),
    _row(10, "UnableToOpenInputStream", "site", False, "stdin stream could not be opened; subcode is errno"),
    _row(11, "InvalidTransferAck", "transfer", False, "internal protocol error during file transfer"),
    _row(12, "TransferOutputError", "transfer", True, "output (or checkpoint) transfer failed; subcode errno or plugin status<<8"),
    _row(13, "TransferInputError", "transfer", True, "input transfer failed; subcode errno or plugin status<<8"),
    _row(14, "IwdError", "code", False, "initial working directory not accessible; subcode is errno"),
    _row(15, "SubmittedOnHold", "user", False, "submitted on hold by request"),
    _row(16, "SpoolingInput", "none", False, "input files are being spooled"),
    _row(17, "JobShadowMismatch", "site", False, "job and shadow versions incompatible"),
    _row(18, "InvalidTransferGoAhead", "transfer", False, "internal protocol error during file transfer"),
    _row(19, "HookPrepareJobFailure", "site", False, "<Keyword>_HOOK_PREPARE_JOB failed"),
    _row(20, "MissedDeferredExecutionTime", "policy", False, "missed its deferred execution time"),
    _row(21, "StartdHeldJob", "site", True, "WANT_HOLD in the machine policy; subcode 101 cpu, 102 memory, 103 runtime, 104 disk"),
    _row(22, "UnableToInitUserLog", "code", False, "job event log could not be initialised"),
    _row(23, "FailedToAccessUserAccount", "site", False, "failed to access the user account"),
    _row(24, "NoCompatibleShadow", "site", False, "no compatible shadow"),
    _row(25, "InvalidCronSettings", "code", False, "invalid cron settings"),
    _row(26, "SystemPolicy", "policy", True, "SYSTEM_PERIODIC_HOLD was true; reason/subcode admin-provided"),
    _row(27, "SystemPolicyUndefined", "policy", False, "the system periodic policy evaluated to UNDEFINED"),
    _row(28, "GlexecChownSandboxToUser", "site", False, "glexec could not chown the sandbox to the user"),
    _row(29, "PrivsepChownSandboxToUser", "site", False, "privsep could not chown the sandbox to the user"),
    _row(30, "GlexecChownSandboxToCondor", "site", False, "glexec could not chown the sandbox back"),
    _row(31, "PrivsepChownSandboxToCondor", "site", False, "privsep could not chown the sandbox back"),
    _row(32, "MaxTransferInputSizeExceeded", "transfer", False, "MAX_TRANSFER_INPUT_MB exceeded"),
    _row(33, "MaxTransferOutputSizeExceeded", "transfer", False, "MAX_TRANSFER_OUTPUT_MB exceeded"),
    _row(34, "JobOutOfResources", "memory", True, "resource usage over the provisioned limit; subcode 102 memory, 104 disk"),
    _row(35, "InvalidDockerImage", "site", True, "docker image could not be pulled or was invalid"),
    _row(36, "FailedToCheckpoint", "code", False, "job failed when sent its checkpoint signal"),
    _row(37, "EC2UserError", "code", False, "EC2 universe user error"),
    _row(38, "EC2InternalError", "site", False, "EC2 universe internal error"),
    _row(39, "EC2AdminError", "site", False, "EC2 universe administrator error"),
    _row(40, "EC2ConnectionProblem", "site", False, "EC2 universe connection problem"),
    _row(41, "EC2ServerError", "site", False, "EC2 universe server error"),
    _row(42, "EC2InstancePotentiallyLostError", "site", False, "EC2 instance potentially lost"),
    _row(43, "PreScriptFailed", "code", False, "pre script failed"),
    _row(44, "PostScriptFailed", "code", False, "post script failed"),
    _row(45, "SingularityTestFailed", "site", False, "singularity/apptainer test failed before launching the job"),
    _row(46, "JobDurationExceeded", "policy", False, "allowed job duration exceeded"),
    _row(47, "JobExecuteExceeded", "policy", False, "allowed execution time exceeded"),
    _row(48, "HookShadowPrepareJobFailure", "site", False, "shadow prepare-job hook asked for a hold"),
    _row(49, "CannotSwitchPrimaryGroup", "code", False, "the requested primary unix group could not be used"),
    # ---- vacate codes (VacateReasonCode, evicted events) -------------------
    _row(1000, "JobPolicyVacate", "policy", False, "PeriodicVacate evaluated to true"),
    _row(1001, "SystemPolicyVacate", "policy", False, "SYSTEM_PERIODIC_VACATE evaluated to true"),
    _row(1002, "ShadowException", "site", True, "a shadow exception occurred"),
    _row(1003, "JobNotStarted", "site", True, "a setup step failed before the job started"),
    _row(1004, "UserVacateJob", "user", False, "the user vacated the job"),
    _row(1005, "JobShouldRequeue", "site", True, "an unspecified error; the job was requeued"),
    _row(1006, "FailedToActivateClaim", "site", False, "the shadow failed to activate the claim"),
    _row(1007, "StarterError", "site", True, "the starter encountered an error"),
    _row(1008, "ReconnectFailed", "site", False, "the shadow failed to reconnect after a network failure"),
    _row(1009, "ClaimDeactivated", "site", False, "the access point asked for the job to be vacated"),
    _row(1010, "StartdVacateCommand", "site", False, "an administrator vacated the slot"),
    _row(1011, "StartdPreemptExpression", "site", True, "the EP's PREEMPT expression was true"),
    _row(1012, "StartdException", "site", False, "the startd died with an internal error"),
    _row(1013, "StartdShutdown", "site", False, "the startd was shut down"),
    _row(1014, "StartdDraining", "site", False, "the slot was drained"),
    _row(1015, "StartdCoalesce", "site", False, "the slot was coalesced"),
    _row(1016, "StartdHibernate", "site", False, "the startd hibernated"),
    _row(1017, "StartdReleaseCommand", "site", False, "the access point released the claim"),
    _row(1018, "StartdPreemptingClaimRank", "site", False, "preempted by a job with higher startd rank"),
    _row(1019, "StartdPreemptingClaimUserPrio", "site", False, "preempted by a user with better priority"),
    _row(1020, "VMError", "site", False, "the EP's virtual machine software failed"),
    _row(1021, "ContainerError", "site", False, "the EP's container software failed"),
    _row(1022, "ScheddVacate", "site", False, "the access point vacated the job"),
    _row(1023, "JobRemoved", "user", True, "the job was removed"),
    _row(1024, "ScratchDirError", "site", False, "the EP scratch directory had an error"),
    _row(1025, "SuccessfulCheckpoint", "none", False, "self-checkpoint restart could not reactivate its claim"),
    _row(1026, "ActivationRefusedBadRequest", "site", False, "activation refused: missing or invalid attributes"),
    _row(1027, "ActivationRefusedNoMatch", "site", False, "activation refused: slot requirements not met"),
    _row(1028, "ActivationRefusedStillCleaning", "site", False, "activation refused: starter still cleaning up"),
    _row(1029, "ActivationRefusedWorklifeExpired", "site", False, "activation refused: claim worklife expired"),
    _row(1030, "ActivationRefusedPreempted", "site", False, "activation refused: claim being preempted"),
    _row(1031, "ActivationRefusedBroken", "site", False, "activation refused: slot is broken"),
    _row(1032, "ActivationRefusedNotIdle", "site", False, "activation refused: slot not idle"),
    _row(1033, "ActivationRefusedUnclaimed", "site", False, "activation refused: slot not claimed"),
    _row(1034, "ActivationRefusedClaimNotFound", "site", False, "activation refused: claim id not found"),
    _row(1035, "ActivationRefusedOldClaim", "site", False, "activation refused: claim id no longer valid"),
    _row(1036, "ActivationRefusedUnhealthy", "site", False, "activation refused: slot health check failed"),
    _row(1037, "StartdRehoming", "site", False, "the startd is rehoming the slot"),
)

HOLD_CODES: Mapping[int, HoldCode] = MappingProxyType({r.code: r for r in _ROWS})

#: Codes where the owner (or submit-time request) is the cause.
USER_HOLD_CODES = frozenset({1, 15, 16})

#: Catch-all codes: the category follows the reason text or the subcode.
TEXT_DECIDES = frozenset(r.code for r in _ROWS if r.text_decides)

#: Documented subcodes (HoldReasonSubCode) that carry meaning by themselves.
SUBCODES: Mapping[int, Mapping[int, str]] = MappingProxyType(
    {
        # condor_config POLICY templates HOLD_IF_*_EXCEEDED (WANT_HOLD_SUBCODE defaults)
        21: MappingProxyType({101: "cpu usage exceeded request_cpus", 102: "memory usage exceeded request_memory",
                              103: "runtime exceeded maximum", 104: "disk usage exceeded allocated disk"}),
        34: MappingProxyType({102: "memory", 104: "disk"}),
        # plugin timeouts on file transfer (manual note on codes 12 and 13)
        12: MappingProxyType({62: "file transfer plugin timed out (ETIME)"}),
        13: MappingProxyType({62: "file transfer plugin timed out (ETIME)"}),
    }
)


def lookup(code: object) -> HoldCode | None:
    """Row for ``code`` (int or numeric string), or None when unknown."""
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return HOLD_CODES.get(code)
    try:
        return HOLD_CODES.get(int(str(code).strip()))
    except (TypeError, ValueError):
        return None


def code_name(code: object) -> str:
    row = lookup(code)
    return row.name if row else f"Code{code}"


def default_category(code: object) -> str:
    """Default opos category for a hold/vacate code; ``unknown`` when unknown."""
    row = lookup(code)
    return row.category if row else "unknown"


def describe(code: object, subcode: object = None) -> str:
    """One-line description, e.g. ``34 JobOutOfResources/102 (memory)``."""
    row = lookup(code)
    head = f"{code} {row.name}" if row else f"{code}"
    if subcode in (None, 0, "0"):
        return head
    note = ""
    if row is not None:
        try:
            sub = int(subcode)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            sub = None
        if sub is not None:
            known = SUBCODES.get(row.code, {}).get(sub)
            if known:
                note = f" ({known})"
            elif row.code in (12, 13) and sub >= 256 and sub % 256 == 0:
                note = f" (plugin exit {sub >> 8})"
            elif row.code in (6, 7, 8, 9, 10, 12, 13, 14):
                note = f" (errno {sub})"
    return f"{head}/{subcode}{note}"
