from pureeqxrl.flags import flag_value


def test_a_flags_value_is_read_in_either_form_and_a_missing_one_is_none():
    argv = ["train", "ppo", "--config", "a.yaml", "--devices=2", "--seed"]
    assert flag_value(argv, "--config") == "a.yaml"
    assert flag_value(argv, "--devices") == "2"
    assert flag_value(argv, "--seed") is None  # no value follows
    assert flag_value(argv, "--preset") is None
