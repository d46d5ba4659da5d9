# Per-round ratios (any number per line, whitespace-separated; non-positive values and
# dashes skipped) summed up as their geometric mean and a 95 % interval: Student's t
# over the log ratios. Prints "GM  [LOW, HIGH]  (N rounds)", or "-" under two rounds.
# An interval that holds 1.00 is a run that cannot tell the two sides apart.
#
#   echo "1.05 0.98 1.02" | awk -f benches/interval.awk
BEGIN {
    # t(0.975, df) for df = 1..30; above that, 2.0.
    split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13 " \
          "2.12 2.11 2.10 2.09 2.09 2.08 2.07 2.07 2.06 2.06 2.06 2.05 2.05 2.05 2.04", t, " ")
}
{
    for (i = 1; i <= NF; i++) if ($i + 0 > 0) { l[++n] = log($i); sum += l[n] }
}
END {
    if (n < 2) { print "-"; exit }
    m = sum / n
    for (i = 1; i <= n; i++) ss += (l[i] - m) ^ 2
    half = (n - 1 <= 30 ? t[n - 1] : 2.0) * sqrt(ss / (n - 1) / n)
    printf "%.3f  [%.3f, %.3f]  (%d rounds)\n", exp(m), exp(m - half), exp(m + half), n
}
