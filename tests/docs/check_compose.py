"""Checks the docker-compose deployment (compose/) and the Dockerfile without a Docker engine:
`docker-compose config` accepts every compose file; the Dockerfile builds with the packages of
scripts/lib/deps.sh and the exact cmake commands of scripts/test, and installs a runtime
package for every shared library the built binary needs; the SLUICE_* variables the compose
files set are options Sluice knows; and the roles' ports in the health checks and the
Prometheus scrape config are the options' defaults."""
import os
import re
import shutil
import subprocess
import sys

import yaml  # python3-yaml, a dependency of Debian's docker-compose

SRC = os.environ.get("SLUICE_TEST_SOURCE_DIR",
                     os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SLUICE = os.environ.get("SLUICE_BIN", "sluice")
COMPOSE = os.path.join(SRC, "compose")
ROLES = ("gateway", "processor", "router", "warehouse")
problems = []


def problem(msg):
    problems.append(msg)
    print("problem:", msg)


def compose_config(name, env=None):
    """The file as docker-compose resolves it, or None (with a problem) if it refuses it."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("SLUICE_") and k not in ("POSTGRES_PASSWORD",)}
    e.update(env or {})
    r = subprocess.run(["docker-compose", "-f", name, "config"], cwd=COMPOSE, env=e,
                       capture_output=True, text=True)
    if r.returncode != 0:
        problem(f"docker-compose config -f {name}: {r.stderr.strip()}")
        return None
    print(f"docker-compose config -f {name}: ok")
    return yaml.safe_load(r.stdout)


def check_compose_files(known_env):
    external_env = {"SLUICE_KAFKA_BROKERS": "kafka1:9092",
                    "SLUICE_POSTGRES_DSN": "host=db dbname=sluice user=sluice"}
    configs = {"docker-compose.yml": compose_config("docker-compose.yml"),
               "sluice-services.yml": compose_config("sluice-services.yml"),
               "docker-compose.external.yml":
                   compose_config("docker-compose.external.yml", external_env)}
    # Without the brokers, the external file says what to set.
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    r = subprocess.run(["docker-compose", "-f", "docker-compose.external.yml", "config", "-q"],
                       cwd=COMPOSE, env=e, capture_output=True, text=True)
    if r.returncode == 0 or "set SLUICE_KAFKA_BROKERS" not in r.stderr:
        problem(f"docker-compose.external.yml without SLUICE_KAFKA_BROKERS: {r.stderr.strip()}")
    for name, cfg in configs.items():
        if not cfg:
            continue
        services = cfg.get("services", {})
        for svc, spec in services.items():
            for var in (spec.get("environment") or {}):
                if var.startswith("SLUICE_") and var not in known_env and \
                        not var.startswith("SLUICE_KAFKA_"):
                    problem(f"{name}: service {svc} sets {var}, which is no Sluice option")
        for role in ROLES:
            if role not in services:
                problem(f"{name}: no {role} service")
    return configs


def check_ports(configs, defaults):
    cfg = configs.get("docker-compose.yml")
    with open(os.path.join(COMPOSE, "prometheus", "prometheus.yml")) as f:
        prom = yaml.safe_load(f)
    scraped = {}
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for n in sd["names"]:
                scraped[n] = sd["port"]
    for role in ROLES:
        port = defaults[f"{role}.port"]
        if scraped.get(role) != port:
            problem(f"prometheus.yml scrapes {role} on {scraped.get(role)}, its port is {port}")
        if cfg and role in cfg["services"]:
            test = " ".join(cfg["services"][role].get("healthcheck", {}).get("test", []))
            if f"127.0.0.1:{port}/health" not in test:
                problem(f"the {role} health check ({test}) does not ask port {port}")


def check_dockerfile():
    with open(os.path.join(SRC, "Dockerfile")) as f:
        docker = f.read()
    with open(os.path.join(SRC, "scripts", "test")) as f:
        test = f.read()
    body = re.search(r"run_suite\(\) \{\n(.*?)\n\}", test, re.S).group(1)
    cmds = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("cmake "):
            line = line.replace('"$dir"', "build").replace(' "$@"', "")
            cmds.append(re.sub(r"\s*>\s*/dev/null$", "", line))
    if len(cmds) != 2:
        problem(f"scripts/test's run_suite has {len(cmds)} cmake commands, expected 2")
    want = "RUN " + " && ".join(cmds)
    if want not in docker.splitlines():
        problem(f"the Dockerfile does not build with scripts/test's commands: want the line\n"
                f"  {want}")
    else:
        print(f"Dockerfile builds as scripts/test does: {want}")
    if ". scripts/lib/deps.sh && sluice_install_deps" not in docker:
        problem("the Dockerfile's build stage does not install scripts/lib/deps.sh's packages")
    if not re.search(r"^USER (?!root)\S+", docker, re.M):
        problem("the Dockerfile's runtime stage does not run as a non-root user")
    runtime = docker.split("FROM debian:12\n", 1)[-1]
    m = re.search(r"apt-get install[^\n]*\\\n(.*?)\n &&", runtime, re.S)
    pkgs = set(m.group(1).replace("\\", " ").split()) if m else set()
    # Every shared library the binary needs comes from a package the runtime stage installs.
    needed = re.findall(r"NEEDED.*\[(.+)\]", subprocess.run(
        ["readelf", "-d", SLUICE], check=True, capture_output=True, text=True).stdout)
    before = len(problems)
    libs = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for lib in needed:
        if lib.startswith(("libc.so", "libm.so", "libpthread.so", "libdl.so")):
            continue  # libc6, in debian:12 already
        if lib.startswith(("libasan.so", "libubsan.so")):
            continue  # a SLUICE_SANITIZE build's runtime; the image is built without it
        hit = re.search(r"\s%s .*=> (\S+)" % re.escape(lib), libs)
        if not hit:
            problem(f"{lib}: not found on this system")
            continue
        r = subprocess.run(["dpkg", "-S", os.path.realpath(hit.group(1))], capture_output=True,
                           text=True)
        if r.returncode != 0:
            r = subprocess.run(["dpkg", "-S", hit.group(1)], capture_output=True, text=True)
        pkg = r.stdout.split(":", 1)[0]
        if pkg not in pkgs:
            problem(f"the binary needs {lib} (package {pkg or '?'}), which the Dockerfile's "
                    f"runtime stage does not install")
    if len(problems) == before:
        print(f"runtime packages cover the {len(needed)} libraries the binary needs")


def main():
    if not shutil.which("docker-compose"):
        print("docker-compose is not installed: apt-get install docker-compose "
              "(scripts/lib/deps.sh installs it)")
        return 1
    ref = subprocess.run([SLUICE, "config", "--reference"], check=True, capture_output=True,
                         text=True).stdout
    known_env = set(re.findall(r"`(SLUICE_\w+)`", ref))
    defaults = {m[0]: int(m[1]) for m in re.findall(r"\| `(\w+\.port)` \|[^|]*\|[^|]*\| `(\d+)`",
                                                    ref)}
    configs = check_compose_files(known_env)
    check_ports(configs, defaults)
    check_dockerfile()
    if problems:
        print(f"{len(problems)} problems")
        return 1
    print("compose files and Dockerfile are consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
