"""L{ets_twisted.memo.Memo}: remembers, stays bounded, skips long keys."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ets_twisted.memo import Memo, PerSecond


class MemoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[object] = []

    def compute(self, key: object) -> str:
        self.calls.append(key)
        if key == "bad":
            raise ValueError(key)
        return f"<{key}>"

    def test_remembers(self) -> None:
        memo = Memo(self.compute)
        self.assertEqual([memo("a"), memo("a"), memo(("t", 1)), memo(("t", 1))], ["<a>"] * 2 + ["<('t', 1)>"] * 2)
        self.assertEqual(self.calls, ["a", ("t", 1)])

    def test_bounded(self) -> None:
        """Full: cleared, then filled again; never more than its size."""
        memo = Memo(self.compute, size=3)
        for key in "abcdefg":
            memo(key)
            self.assertLessEqual(len(memo), 3)
        memo("g")
        self.assertEqual(self.calls, list("abcdefg"))

    def test_long_text_not_kept(self) -> None:
        memo = Memo(self.compute, max_length=4)
        memo("12345")
        memo("12345")
        self.assertEqual(len(memo), 0)
        self.assertEqual(self.calls, ["12345", "12345"])

    def test_exceptions_not_kept(self) -> None:
        memo = Memo(self.compute)
        for _ in range(2):
            self.assertRaises(ValueError, memo, "bad")
        self.assertEqual(self.calls, ["bad", "bad"])


class PerSecondTests(SynchronousTestCase):
    def test_once_per_second(self):
        """Computed once for each whole second, again when the second changes."""
        calls = []
        per_second = PerSecond(lambda second: calls.append(second) or f"t{second}")
        self.assertEqual([per_second(t) for t in (10.0, 10.2, 10.99, 11.0, 11.5, 10.5)],
                         ["t10", "t10", "t10", "t11", "t11", "t10"])
        self.assertEqual(calls, [10, 11, 10])
