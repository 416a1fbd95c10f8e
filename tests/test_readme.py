"""The README's set-up commands are the ones CI and users run."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    text = open(os.path.join(REPO, "README.md")).read()
    return re.findall(r"^(python3 -m venv .*)$", text, flags=re.M)


def test_ci_runs_exactly_the_readme_test_command():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "frejax.main --config=configs/long_video.py" in main_job
    assert "pytest" in tests
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert f"TEST_COMMAND='{tests}'" in ci


def test_requirements_pin_the_stack():
    reqs = open(os.path.join(REPO, "requirements.txt")).read()
    for pin in ("jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "optax==0.2.8",
                "orbax-checkpoint==0.12.8", "grain==0.2.18", "tensorflow-datasets==4.9.10",
                "ml_collections==1.1.0", "chex==0.1.92"):
        assert pin in reqs, pin
    assert "tensorflow\n" not in reqs and "tensorflow==" not in reqs
