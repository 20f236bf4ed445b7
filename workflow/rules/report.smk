rule report:
    """Table 1 (ours beside the paper's), the main-job summary, metrics.json and figures."""
    input:
        unpack(report_inputs),
    output:
        table=REPORTS["table"],
        main=REPORTS["main"],
        metrics=REPORTS["metrics"],
        curves=REPORTS["curves"],
    log:
        "logs/report.log",
    params:
        spec=report_spec,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m larsvae.reports --spec {params.spec:q} --table {output.table:q}"
        " --main {output.main:q} --metrics {output.metrics:q} --curves {output.curves:q}"
        " > {log:q} 2>&1"


rule sample_grid:
    """A grid of 64 model samples x ~ p(x|z) p(z) (LARS: z from the exact truncated sampler)."""
    input:
        "models/{dataset}/{arch}/{prior}/{mode}/seed{seed}/model.pt",
    output:
        "reports/figures/samples/{dataset}_{arch}_{prior}_{mode}_seed{seed}.png",
    log:
        "logs/sample_grid/{dataset}/{arch}/{prior}/{mode}/seed{seed}.log",
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "OMP_NUM_THREADS={threads} larsvae sample --threads {threads} --checkpoint {input:q} --n 64"
        " --seed {wildcards.seed} --device cpu --out {output:q} > {log:q} 2>&1"
