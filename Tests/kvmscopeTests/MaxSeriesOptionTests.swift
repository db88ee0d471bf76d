import Testing

/// `serve --max-series N` is a hard cap on each per-VM family's label sets, vm="other" included: 1 would fold
/// every VM into "other" (what a trial user found), so the least cap is 2.
@Suite struct MaxSeriesOptionTests {
    @Test func aCapBelowTwoIsRefusedWithOneLine() throws {
        for n in ["1", "0", "-3"] {
            let r = try CLI.run(["serve", "--max-series", n])
            #expect(r.status == 64, "--max-series \(n)")
            #expect(r.stderr == "kvmscope: --max-series must be at least 2: it counts the vm=\"other\" series the rest fold into\n",
                    "--max-series \(n)")
            #expect(r.stdout.isEmpty)
        }
    }
}
