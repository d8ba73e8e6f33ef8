"""Realistic synthetic HTCondor job ads for benchmarks and tests.

``make_ads(n, seed)`` yields job ads (dicts of Python values; expressions as
``opos_monitor.classads.Expr``) with a FIFE-like failure mix: successes,
non-zero exits, signals, memory holds, site/transfer/docker/CVMFS holds,
credential failures, policy removals.  ``make_history_file`` writes them the
way the schedd writes its history file (old ClassAd syntax, one
``*** Offset = ...`` banner after each ad); ``write_long`` / ``write_json``
write ``condor_q -long`` and ``-json`` shapes.  Each ad carries the truth of
its scenario in ``OposTruthScenario`` so classifier benchmarks can score.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

from opos_monitor.classads import ERROR, Expr

__all__ = [
    "SCENARIOS",
    "format_long",
    "format_value",
    "make_ad",
    "make_ads",
    "make_history_file",
    "write_history",
    "write_json",
    "write_jsonl",
    "write_long",
]

SCHEDDS = ["jobsub01.fnal.gov", "jobsub02.fnal.gov", "jobsub03.fnal.gov", "jobsub04.fnal.gov"]
EXPERIMENTS = {
    "nova": ("novapro", "group_nova.prod", "nova"),
    "dune": ("dunepro", "group_dune.prod", "dune"),
    "uboone": ("uboonepro", "group_uboone.prod", "uboone"),
    "mu2e": ("mu2epro", "group_mu2e.prod", "mu2e"),
}
SITES = [
    # (GLIDEIN_Site, resource name, host domain, weight)
    ("FermiGrid", "GPGrid", "fnal.gov", 40),
    ("Nebraska", "Nebraska", "unl.edu", 10),
    ("Wisconsin", "CHTC", "chtc.wisc.edu", 8),
    ("MIT", "MIT_CMS", "mit.edu", 6),
    ("UChicago", "MWT2", "uchicago.edu", 6),
    ("Caltech", "CIT_CMS_T2", "ultralight.org", 5),
    ("BNL", "BNL_ATLAS_2", "bnl.gov", 5),
    ("SU-ITS", "SU-ITS-CE2", "syr.edu", 4),
    ("Clemson", "Clemson-Palmetto", "clemson.edu", 4),
    ("Lancaster", "UKI-NORTHGRID-LANCS-HEP", "lancs.ac.uk", 3),
    ("CERN", "CERN-PROD", "cern.ch", 3),
]

# scenario name -> weight (history files are completed or removed jobs)
SCENARIOS: dict[str, int] = {
    "success": 560,
    "exit_code": 90,
    "signal_segv": 25,
    "missing_executable": 10,
    "memory_hold_removed": 60,
    "memory_policy_removed": 25,
    "memory_oom_signal": 15,
    "site_cvmfs": 25,
    "site_docker": 15,
    "site_blackhole_shadow": 20,
    "transfer_input": 30,
    "transfer_output": 25,
    "proxy_expired": 20,
    "token_auth": 15,
    "user_removed": 30,
    "walltime_removed": 35,
}

MEMORY_HOLD = (
    "Error from slot1_{slot}@glidein_{pid}_{rnd}@{host}: Job has gone over cgroup memory limit "
    "of {limit} megabytes. Last measured usage: {usage} megabytes.  Consider resubmitting "
    "with a higher request_memory."
)
POLICY_MEMORY = (
    "The job attribute PeriodicHold expression '(MemoryUsage > RequestMemory)' evaluated to TRUE"
)
CVMFS_HOLD = (
    "Error from slot1_{slot}@{host}: Failed to execute '/cvmfs/{exp}.opensciencegrid.org/products/"
    "setup_{exp}.sh' with arguments 'v08': (errno=2: No such file or directory)"
)
DOCKER_HOLD = (
    "Error from slot1_{slot}@{host}: Cannot start container: invalid image name: "
    "docker://fnalfife/sl7:latest (error 125: docker: Error response from daemon: "
    "OCI runtime create failed)"
)
SHADOW_EXC = "Error from slot1_{slot}@{host}: STARTER at {ip} failed to send file(s) to <131.225.{a}.{b}:9618>"
TRANSFER_IN = (
    "Transfer input files failure at execution point slot1_{slot}@{host} using protocol https. "
    "Details: Error from slot1_{slot}@{host}: FILETRANSFER:1:non-zero exit (1) from "
    "/usr/libexec/condor/curl_plugin. |Error: HTTP response code said error (with HTTP code 404 from "
    "https://fndcadoor.fnal.gov:2880/pnfs/fnal.gov/usr/{exp}/scratch/users/{owner}/input_{rnd}.tar)"
)
TRANSFER_OUT = (
    "Transfer output files failure at access point {schedd} while receiving files from the "
    "execution point. Details: reading from file /var/lib/condor/spool/{cid}/0/cluster{cid}.proc0.subproc0/"
    "out_{rnd}.root: (errno 28) No space left on device"
)
PROXY_HOLD = (
    "Error from slot1_{slot}@{host}: Failed to get expiration time of proxy "
    "/var/lib/condor/execute/dir_{rnd}/x509up_u{uid}: unable to read proxy file; proxy expired"
)
TOKEN_HOLD = (
    "Error from slot1_{slot}@{host}: Job credentials are not available: "
    "SciToken for audience https://wlcg.cern.ch/jwt/v1/any has expired"
)
WALLTIME_REMOVE = (
    "The job attribute PeriodicRemove expression '(JobStatus == 2 && (time() - "
    "JobCurrentStartDate > JOB_EXPECTED_MAX_LIFETIME))' evaluated to TRUE"
)


def _pick_weighted(rng: random.Random, table: Mapping[str, int]) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


def _site(rng: random.Random) -> tuple[str, str, str]:
    site = rng.choices(SITES, weights=[s[3] for s in SITES])[0]
    return site[0], site[1], site[2]


def make_ad(rng: random.Random, cluster: int, proc: int, now: int, scenario: str | None = None) -> dict[str, Any]:
    """One completed/removed job ad (about 130-150 attributes)."""
    scenario = scenario or _pick_weighted(rng, SCENARIOS)
    exp = rng.choice(list(EXPERIMENTS))
    owner, group, vo = EXPERIMENTS[exp]
    schedd = SCHEDDS[cluster % len(SCHEDDS)]
    site, resource, domain = _site(rng)
    node = f"{rng.choice(['wn', 'node', 'c', 'fnpc'])}{rng.randint(100, 9999)}.{domain}"
    slot = rng.randint(1, 48)
    pid, rnd = rng.randint(1000, 99999), rng.randint(10**6, 10**7)
    host = f"glidein_{pid}_{rnd}@{node}" if site != "FermiGrid" else node
    remote_host = f"slot1_{slot}@{host}"
    qdate = now - rng.randint(3600, 7 * 86400)
    start = qdate + rng.randint(30, 6 * 3600)
    wall = rng.randint(60, 40 * 3600)
    end = start + wall
    req_mem = rng.choice([1000, 2000, 2500, 3000, 4000, 6000, 8000])
    mem_usage = int(req_mem * rng.uniform(0.05, 0.95))
    rss = mem_usage * 1024 + rng.randint(0, 1023)
    req_disk = rng.choice([10, 20, 35, 50]) * 1024 * 1024
    user_cpu = wall * rng.uniform(0.3, 0.98)
    sys_cpu = wall * rng.uniform(0.0, 0.05)
    uid = rng.randint(40000, 60000)
    status, exit_code, exit_by_signal, exit_signal = 4, 0, False, None
    hold: tuple[int, int, str] | None = None
    remove_reason = None
    run_count = 1
    fmt = dict(slot=slot, pid=pid, rnd=rnd, host=node, exp=exp, owner=owner, schedd=schedd,
               cid=cluster, uid=uid, ip=f"<{rng.randint(10, 200)}.{rng.randint(0, 255)}.0.{rng.randint(1, 254)}:9618>",
               a=rng.randint(0, 255), b=rng.randint(1, 254))
    if scenario == "exit_code":
        exit_code = rng.choice([1, 1, 1, 2, 65, 70, 255])
    elif scenario == "signal_segv":
        exit_by_signal, exit_signal, exit_code = True, 11, None
    elif scenario == "missing_executable":
        exit_code = 127
    elif scenario == "memory_oom_signal":
        exit_by_signal, exit_signal, exit_code = True, 9, None
        mem_usage = int(req_mem * rng.uniform(1.05, 2.0))
        rss = mem_usage * 1024
    elif scenario in ("memory_hold_removed", "memory_policy_removed"):
        status = 3
        mem_usage = int(req_mem * rng.uniform(1.05, 3.0))
        rss = mem_usage * 1024
        text = (MEMORY_HOLD.format(limit=req_mem, usage=mem_usage, **fmt)
                if scenario == "memory_hold_removed" else POLICY_MEMORY)
        hold = (34, 0, text) if scenario == "memory_hold_removed" else (3, 0, text)
        remove_reason = "via condor_rm (by user %s)" % owner
    elif scenario == "site_cvmfs":
        status, hold = 3, (6, 2, CVMFS_HOLD.format(**fmt))
        remove_reason = "The job attribute PeriodicRemove expression '(NumHolds > 3)' evaluated to TRUE"
        run_count = rng.randint(1, 4)
    elif scenario == "site_docker":
        status, hold = 3, (35, 0, DOCKER_HOLD.format(**fmt))
        remove_reason = "via condor_rm (by user %s)" % owner
    elif scenario == "site_blackhole_shadow":
        status, hold = 3, (12, 0, SHADOW_EXC.format(**fmt))
        remove_reason = "The job attribute PeriodicRemove expression '(NumShadowStarts > 10)' evaluated to TRUE"
        run_count = rng.randint(5, 12)
    elif scenario == "transfer_input":
        status, hold = 3, (13, 256, TRANSFER_IN.format(**fmt))
        remove_reason = "via condor_rm (by user %s)" % owner
    elif scenario == "transfer_output":
        status, hold = 3, (12, 28, TRANSFER_OUT.format(**fmt))
        remove_reason = "via condor_rm (by user %s)" % owner
    elif scenario == "proxy_expired":
        status, hold = 3, (4, 0, PROXY_HOLD.format(**fmt))
        remove_reason = "via condor_rm (by user %s)" % owner
    elif scenario == "token_auth":
        status, hold = 3, (45, 0, TOKEN_HOLD.format(**fmt))
        remove_reason = "via condor_rm (by user %s)" % owner
    elif scenario == "user_removed":
        status, exit_code = 3, None
        remove_reason = "via condor_rm (by user %s)" % owner
    elif scenario == "walltime_removed":
        status, exit_code = 3, None
        remove_reason = WALLTIME_REMOVE
    if status == 3 and scenario not in ("user_removed", "walltime_removed"):
        exit_code = None
    num_holds = 1 if hold else 0
    proxy_exp = (qdate - rng.randint(60, 3600)) if scenario == "proxy_expired" else qdate + 7 * 86400
    ad: dict[str, Any] = {
        "Arguments": f"-c fife_wrap --exe {exp}_mc.sh --config {exp}_prod_{rnd}.fcl -n 100",
        "AcctGroup": group.split(".")[-1],
        "AcctGroupUser": owner,
        "AccountingGroup": f"{group}.{owner}",
        "AutoClusterAttrs": "JobUniverse,LastCheckpointPlatform,NumCkpts,MachineLastMatchTime,"
                            "DESIRED_Sites,RequestCpus,RequestDisk,RequestMemory,x509userproxysubject",
        "AutoClusterId": rng.randint(1, 5000),
        "BlockReadKbytes": rng.randint(0, 10**7),
        "BlockWriteKbytes": rng.randint(0, 10**7),
        "BytesRecvd": float(rng.randint(10**4, 10**9)),
        "BytesSent": float(rng.randint(10**4, 10**9)),
        "ClusterId": cluster,
        "Cmd": f"/grid/fermiapp/{exp}/jobsub/{owner}/fife_wrap",
        "CommittedSlotTime": float(wall),
        "CommittedSuspensionTime": 0,
        "CommittedTime": wall,
        "CompletionDate": end if status == 4 else 0,
        "CondorPlatform": "$CondorPlatform: x86_64_AlmaLinux9 $",
        "CondorVersion": "$CondorVersion: 23.0.12 2024-06-13 BuildID: 739441 PackageID: 23.0.12-1 $",
        "CoreSize": 0,
        "CpusProvisioned": 1,
        "CumulativeRemoteSysCpu": round(sys_cpu, 1),
        "CumulativeRemoteUserCpu": round(user_cpu, 1),
        "CumulativeSlotTime": float(wall),
        "CumulativeSuspensionTime": 0,
        "CumulativeTransferTime": rng.randint(0, 600),
        "CurrentHosts": 0,
        "DESIRED_Sites": "FermiGrid,Nebraska,Wisconsin,MIT,UChicago,Caltech,BNL,SU-ITS,Clemson,Lancaster,CERN",
        "DiskProvisioned": req_disk + rng.randint(0, 10**5),
        "DiskUsage": rng.randint(1000, req_disk),
        "EncryptExecuteDirectory": False,
        "EnteredCurrentStatus": end,
        "Environment": f"CLUSTER={cluster} PROCESS={proc} GRID_USER={owner} EXPERIMENT={exp} "
                       f"JOBSUBJOBID={cluster}.{proc}@{schedd} IFDH_BASE_URI=https://sammaster.fnal.gov:8483/sam/{exp}/api",
        "Err": "_condor_stderr",
        "ExecutableSize": 25,
        "ExitBySignal": exit_by_signal,
        "FileSystemDomain": "fnal.gov",
        "GlobalJobId": f"{schedd}#{cluster}.{proc}#{qdate}",
        "HoldReasonCode": None,
        "ImageSize": rss + rng.randint(0, 10**5),
        "In": "/dev/null",
        "Iwd": f"/fife/local/scratch/uploads/{exp}/{owner}/2024-06-{rng.randint(10, 28)}_{rnd}",
        "JOB_EXPECTED_MAX_LIFETIME": rng.choice([28800, 86400, 172800]),
        "JOB_GLIDEIN_Site": "$$(GLIDEIN_Site:Unknown)",
        "JOB_GLIDEIN_ResourceName": "$$(GLIDEIN_ResourceName:Unknown)",
        "JobCurrentStartDate": start,
        "JobCurrentStartExecutingDate": start + rng.randint(1, 300),
        "JobLeaseDuration": 2400,
        "JobNotification": 0,
        "JobPrio": 0,
        "JobRunCount": run_count,
        "JobStartDate": start,
        "JobStatus": status,
        "JobUniverse": 5,
        "Jobsub_Group": vo,
        "JobsubClientDN": f"/DC=org/DC=cilogon/C=US/O=Fermi National Accelerator Laboratory/OU=Robots/CN={exp}gpvm01.fnal.gov/CN=cron/CN={owner}",
        "JobsubClientIpAddress": f"131.225.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "JobsubClientKerberosPrincipal": f"{owner}/cron/{exp}gpvm01.fnal.gov@FNAL.GOV",
        "JobsubClientVersion": "1.3.6",
        "JobsubJobId": f"{cluster}.{proc}@{schedd}",
        "JobsubServerVersion": "lite_v1_3_6",
        "KillSig": "SIGTERM",
        "LastJobLeaseRenewal": end,
        "LastJobStatus": 2,
        "LastMatchTime": start - rng.randint(1, 30),
        "LastPublicClaimId": f"<{node}:{rng.randint(9000, 9999)}>#{rng.randint(10**9, 2 * 10**9)}#{rng.randint(1, 99)}#...",
        "LastRemoteHost": remote_host,
        "LeaveJobInQueue": False,
        "MATCH_EXP_JOB_GLIDEIN_Site": site,
        "MATCH_EXP_JOB_GLIDEIN_ResourceName": resource,
        "MATCH_GLIDEIN_Site": site,
        "MachineAttrCpus0": 1,
        "MachineAttrGLIDEIN_Site0": site,
        "MachineAttrSlotWeight0": 1,
        "MaxHosts": 1,
        "MemoryProvisioned": req_mem,
        "MemoryUsage": Expr("((ResidentSetSize + 1023) / 1024)"),
        "MinHosts": 1,
        "MyType": "Job",
        "NiceUser": False,
        "NumCkpts": 0,
        "NumHolds": num_holds,
        "NumHoldsByReason": {_hold_name(hold[0]): 1} if hold else None,
        "NumJobCompletions": 1 if status == 4 else 0,
        "NumJobMatches": run_count,
        "NumJobStarts": run_count,
        "NumRestarts": 0,
        "NumShadowStarts": run_count,
        "NumSystemHolds": 0,
        "OnExitHold": False,
        "OnExitRemove": True,
        "OrigMaxHosts": 1,
        "Out": "_condor_stdout",
        "Owner": owner,
        "PeriodicHold": Expr("(MemoryUsage > RequestMemory) || (time() - JobCurrentStartDate > JOB_EXPECTED_MAX_LIFETIME)"),
        "PeriodicRelease": Expr("(NumJobStarts < 3) && (HoldReasonCode =?= 13 || HoldReasonCode =?= 12) && (time() - EnteredCurrentStatus > 600)"),
        "PeriodicRemove": Expr("(NumHolds > 3) || (NumShadowStarts > 10) || (JobStatus == 5 && time() - EnteredCurrentStatus > 86400 * 7)"),
        "ProcId": proc,
        "QDate": qdate,
        "Rank": 0.0,
        "RecentStatsLifetimeStarter": rng.randint(100, 1200),
        "ReleaseReason": None,
        "RemoteSysCpu": round(sys_cpu, 1),
        "RemoteUserCpu": round(user_cpu, 1),
        "RemoteWallClockTime": float(wall),
        "RequestCpus": 1,
        "RequestDisk": req_disk,
        "RequestMemory": req_mem,
        "Requirements": Expr('(TARGET.Arch == "X86_64") && (TARGET.OpSys == "LINUX") && (TARGET.Disk >= RequestDisk) && '
                             '(TARGET.Memory >= RequestMemory) && (TARGET.HasFileTransfer) && '
                             'stringListIMember(TARGET.GLIDEIN_Site, my.DESIRED_Sites)'),
        "ResidentSetSize": rss,
        "RoutedToJobId": None,
        "ScheddBday": qdate - 86400 * 30,
        "ShouldTransferFiles": "YES",
        "SingularityImage": "/cvmfs/singularity.opensciencegrid.org/fermilab/fnal-wn-sl7:latest",
        "StartdPrincipal": f"execute-side@matchsession/{fmt['ip'][1:-1].split(':')[0]}",
        "StatsLifetimeStarter": wall,
        "StreamOut": False,
        "SubmitEventNotes": f"DAG Node: {exp}_{proc}",
        "TargetType": "Machine",
        "TotalSubmitProcs": rng.randint(1, 5000),
        "TotalSuspensions": 0,
        "TransferInFinished": start + rng.randint(2, 100),
        "TransferInput": f"/fife/local/scratch/uploads/{exp}/{owner}/input_{rnd}.tar",
        "TransferInputSizeMB": rng.randint(0, 500),
        "TransferInQueued": start,
        "TransferInStarted": start + 1,
        "TransferOutput": "",
        "User": f"{owner}@fnal.gov",
        "WantRemoteIO": True,
        "WantRemoteSyscalls": False,
        "WhenToTransferOutput": "ON_EXIT_OR_EVICT",
        "x509userproxy": f"/var/lib/jobsub/creds/proxies/{exp}/x509cc_{owner}_Production",
        "x509UserProxyExpiration": proxy_exp,
        "x509UserProxyFirstFQAN": f"/fermilab/{exp}/Role=Production/Capability=NULL",
        "x509UserProxyFQAN": f"/DC=org/DC=cilogon/C=US/O=Fermi National Accelerator Laboratory/OU=Robots/CN={owner},"
                             f"/fermilab/{exp}/Role=Production/Capability=NULL,/fermilab/Role=NULL/Capability=NULL",
        "x509userproxysubject": f"/DC=org/DC=cilogon/C=US/O=Fermi National Accelerator Laboratory/OU=Robots/CN={owner}",
        "x509UserProxyVOName": "fermilab",
        "OAuthServicesNeeded": "scitokens" if rng.random() < 0.3 else None,
        "Jobsub_Wrapper_Hash": f"{rng.getrandbits(160):040x}",
        "RequestGPUs": None,
        "ExitStatus": 0,
        "LastRejMatchReason": None,
        "LastRejMatchTime": None,
        "StarterIpAddr": fmt["ip"],
        "UserLog": f"/fife/local/scratch/uploads/{exp}/{owner}/{cluster}.log",
        "ProjectName": f"{exp}_mc_2024",
        "CPUsUsage": round(rng.uniform(0.2, 1.0), 6),
        "DelegatedProxyExpiration": proxy_exp,
        "LastVacateTime": None,
        "LastCheckpointPlatform": None,
    }
    if exit_code is not None:
        ad["ExitCode"] = exit_code
    if exit_by_signal:
        ad["ExitSignal"] = exit_signal
        ad["JobCoreDumped"] = exit_signal == 11
    if hold:
        code, sub, text = hold
        ad["LastHoldReason"] = text
        ad["LastHoldReasonCode"] = code
        ad["LastHoldReasonSubCode"] = sub
        ad["HoldReasonCode"] = None
        ad["JobStatusOnRelease"] = 2
    if status == 3:
        ad["RemoveReason"] = remove_reason
        ad["CompletionDate"] = 0
        ad["JobFinishedHookDone"] = end
    if rng.random() < 0.15:
        ad["VacateReason"] = "Job was evicted."
        ad["VacateReasonCode"] = 1004
        ad["VacateReasonSubCode"] = 0
    if rng.random() < 0.01:
        ad["SubmitterGlobalJobId"] = f"{schedd}#{cluster}.{proc}#{qdate}"
        ad["BigCounter"] = rng.getrandbits(80)  # beyond 64-bit: readers must keep it
    ad["OposTruthScenario"] = scenario
    ad["MemoryUsage"] = Expr("((ResidentSetSize + 1023) / 1024)") if rng.random() < 0.5 else mem_usage
    return {k: v for k, v in ad.items() if v is not None}


def _hold_name(code: int) -> str:
    return {3: "JobPolicy", 4: "CorruptedCredential", 6: "FailedToCreateProcess", 12: "TransferOutputError",
            13: "TransferInputError", 34: "JobOutOfResources", 35: "InvalidDockerImage",
            45: "CredentialsUnavailable"}.get(code, "Unspecified")


def make_ads(n: int, seed: int = 0, now: int = 1_718_000_000) -> Iterator[dict[str, Any]]:
    """``n`` realistic history ads, deterministic for a seed."""
    rng = random.Random(seed)
    cluster = 4_000_000 + rng.randint(0, 10**5)
    proc = 0
    for _ in range(n):
        if proc >= rng.randint(1, 50):
            cluster, proc = cluster + rng.randint(1, 30), 0
        yield make_ad(rng, cluster, proc, now)
        proc += 1


def format_value(v: Any) -> str:
    """Old ClassAd syntax for one value (as the schedd writes it)."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "undefined"
    if v is ERROR:
        return "error"
    if isinstance(v, Expr):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace('"', '\\"') + '"'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return 'real("NaN")'
        if v in (float("inf"), float("-inf")):
            return 'real("INF")' if v > 0 else 'real("-INF")'
        text = "%.16G" % v
        return text if any(c in text for c in ".EN") else text + ".0"
    if isinstance(v, (list, tuple)):
        return "{ " + ",".join(format_value(x) for x in v) + " }"
    if isinstance(v, Mapping):
        return "[ " + "; ".join(f"{k} = {format_value(x)}" for k, x in v.items()) + " ]"
    raise TypeError(f"cannot format {type(v).__name__}")


def format_long(ad: Mapping[str, Any]) -> str:
    """An ad as ``Attr = value`` lines (no separator)."""
    return "".join(f"{k} = {format_value(v)}\n" for k, v in ad.items())


def _banner(ad: Mapping[str, Any], offset: int) -> str:
    return (f'*** Offset = {offset} ClusterId = {ad.get("ClusterId", 0)} ProcId = {ad.get("ProcId", 0)} '
            f'Owner = "{ad.get("Owner", "")}" CompletionDate = {ad.get("CompletionDate", 0)}\n')


def write_history(out: TextIO, ads: Iterator[Mapping[str, Any]]) -> int:
    """Write ads as a raw schedd history file (banner after each ad)."""
    n = offset = 0
    for ad in ads:
        text = format_long(ad)
        out.write(text)
        out.write(_banner(ad, offset))
        offset += len(text.encode())
        n += 1
    return n


def write_long(out: TextIO, ads: Iterator[Mapping[str, Any]]) -> int:
    """``condor_q -long`` shape: ads separated by a blank line."""
    n = 0
    for ad in ads:
        out.write(format_long(ad))
        out.write("\n")
        n += 1
    return n


def _json_value(v: Any) -> Any:
    if v is ERROR:
        return "/Expr(error)/"
    if isinstance(v, Expr):
        return f"/Expr({v})/"
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return "/Expr(%s)/" % format_value(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _json_value(x) for k, x in v.items()}
    return v


def write_json(out: TextIO, ads: Iterator[Mapping[str, Any]]) -> int:
    """``condor_q -json`` shape: a JSON array, objects split by ``,`` lines."""
    n = 0
    out.write("[\n")
    for ad in ads:
        if n:
            out.write(",\n")
        out.write(json.dumps({k: _json_value(v) for k, v in ad.items()}, indent=2, ensure_ascii=False))
        out.write("\n")
        n += 1
    out.write("]\n")
    return n


def write_jsonl(out: TextIO, ads: Iterator[Mapping[str, Any]]) -> int:
    """One JSON object per line."""
    n = 0
    for ad in ads:
        out.write(json.dumps({k: _json_value(v) for k, v in ad.items()}, ensure_ascii=False))
        out.write("\n")
        n += 1
    return n


def make_history_file(path: str | Path, n: int = 20000, seed: int = 0) -> Path:
    """Write ``n`` realistic ads to ``path`` as a raw history file; return the path."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as out:
        write_history(out, make_ads(n, seed))
    return path
