rule report:
    """Table 1 (ours beside the paper's), the main-job summary, metrics.json and figures."""
    input:
        unpack(report_inputs),
    output:
        table=report(REPORTS["table"], caption="../report/table1.rst", category="Table 1"),
        main=report(REPORTS["main"], caption="../report/main.rst", category="Table 1"),
        metrics=REPORTS["metrics"],
        curves=report(REPORTS["curves"], caption="../report/curves.rst", category="Training"),
    log:
        f"{P.runs}/logs/report.log",
    params:
        spec=report_spec,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "larsvae report --spec {params.spec:q} --table {output.table:q} --main {output.main:q}"
        " --metrics {output.metrics:q} --curves {output.curves:q} > {log:q} 2>&1"


if P.results:

    rule report_progress:
        """Table 1 of the cells published so far (cells not yet published show a dash and the
        header counts them): a grid longer than one sitting shows where it stands."""
        input:
            unpack(progress_inputs),
        output:
            table=PROGRESS["table"],
            main=PROGRESS["main"],
            metrics=PROGRESS["metrics"],
            curves=PROGRESS["curves"],
        log:
            f"{P.runs}/logs/report_progress.log",
        params:
            spec=progress_spec,
        conda:
            "../envs/larsvae.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        shell:
            "larsvae report --spec {params.spec:q} --table {output.table:q} --main {output.main:q}"
            " --metrics {output.metrics:q} --curves {output.curves:q} > {log:q} 2>&1"


if PRIOR_CELLS:

    rule priors_report:
        """The prior comparison: test NLL, KL and reconstruction over seeds, the gain over
        N(0, I) with its paired error, parameters, sampling and training cost, the claims of
        Bauer & Mnih and Lawson et al. computed; NLL against parameters and sampling time."""
        input:
            unpack(priors_inputs),
        output:
            table=report(PRIORS_REPORT["table"], category="Priors"),
            figure=report(PRIORS_REPORT["figure"], category="Priors"),
        log:
            f"{P.runs}/logs/priors_report.log",
        params:
            spec=priors_spec,
        conda:
            "../envs/larsvae.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        shell:
            "OMP_NUM_THREADS={threads} larsvae priors-report --threads {threads}"
            " --spec {params.spec:q} --table {output.table:q} --figure {output.figure:q}"
            " > {log:q} 2>&1"


rule sample_grid:
    """A grid of model samples x ~ p(x|z) p(z) (LARS: exact truncated sampler, ranked by a(z))."""
    input:
        L.model(),
    output:
        report(L.sample_grid(), caption="../report/samples.rst", category="Samples"),
    log:
        L.log("sample_grid"),
    params:
        n=sample_count,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "OMP_NUM_THREADS={threads} larsvae sample --threads {threads} --checkpoint {input:q}"
        " --n {params.n} --seed {wildcards.seed} --device cpu --out {output:q} > {log:q} 2>&1"


rule toy2d:
    """The 2-D illustration (Sec. 3): LARS over N(0, I) fitted to three toy densities."""
    output:
        png=report(L.report("figures/fig2d_lars_toy.png"), caption="../report/toy2d.rst",
                   category="2-D illustration"),
        summary=L.report("figures/fig2d_lars_toy.json"),
    log:
        f"{P.runs}/logs/toy2d.log",
    params:
        steps=P.top["report"]["toy2d_steps"],
        seed=P.top["report"]["toy2d_seed"],
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "OMP_NUM_THREADS={threads} larsvae toy2d --threads {threads} --device cpu"
        " --steps {params.steps} --seed {params.seed} --out {output.png:q} > {log:q} 2>&1"


rule appendix_tables:
    """Tables D.1-D.5 (post-hoc vs joint, a(z) size, truncation, flows), ours beside the paper's."""
    input:
        unpack(appendix_inputs),
    output:
        **{k: report(v, caption="../report/appendix_tables.rst", category="Appendix D")
           for k, v in APPENDIX.items()},
    log:
        f"{P.runs}/logs/appendix_tables.log",
    params:
        spec=appendix_spec,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "larsvae appendix --spec {params.spec:q} --out-dir \"$(dirname {output.d1:q})\""
        " > {log:q} 2>&1"


rule z_convergence:
    """Figure A.2: convergence of the Z estimate, from the reduced Z's per-batch sums."""
    input:
        convergence_inputs,
    output:
        report(Z_CONVERGENCE, caption="../report/z_convergence.rst", category="Appendix D"),
    log:
        f"{P.runs}/logs/z_convergence.log",
    params:
        curves=convergence_args,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "larsvae z-convergence {params.curves} --out {output:q} > {log:q} 2>&1"


rule rank:
    """Figures D.5-D.8: proposal samples ranked by a(z) (best / random / worst, sorted a(z))."""
    input:
        L.model(),
    output:
        samples=f"{RANKING_RUN}/samples.npz",
        grid=report(f"{RANKING}/grid.png", caption="../report/ranking.rst",
                    category="Appendix D"),
        curve=report(f"{RANKING}/acceptance.png", caption="../report/ranking.rst",
                     category="Appendix D"),
        summary=f"{RANKING}/summary.json",
    log:
        L.log("rank"),
    params:
        n=P.top["report"]["rank_samples"],
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "OMP_NUM_THREADS={threads} larsvae rank --threads {threads} --device cpu"
        " --checkpoint {input:q} --n {params.n} --seed {wildcards.seed}"
        " --out-dir \"$(dirname {output.samples:q})\" --figures-dir \"$(dirname {output.grid:q})\""
        " > {log:q} 2>&1"


rule latent2d:
    """Figures D.10-D.14 and their KL table: aggregate posterior, proposal, a(z) and prior of
    the VAEs with a 2-D latent space (standard, joint LARS large / small a(z), post-hoc)."""
    input:
        unpack(latent2d_inputs),
    output:
        **{k: report(v, caption="../report/latent2d.rst", category="Appendix D")
           for k, v in LATENT2D_FILES.items()},
    log:
        f"{P.runs}/logs/latent2d.log",
    params:
        models=latent2d_args,
        grid=P.top["report"]["latent2d_grid"],
        seed=P.seeds[0],
        budget=P.name,
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} larsvae latent2d --threads {threads} --device cpu"
        " {params.models} --dataset-file {input.data:q} --labels-file {input.labels:q}"
        " --grid {params.grid} --seed {params.seed} --budget {params.budget}"
        " --out-dir \"$(dirname {output.table:q})\" > {log:q} 2>&1"


rule mog2d:
    """Figures 2 / D.3 / D.4: LARS (a = MLP[10], MLP[10-10]; T = 100, inf), RealNVP and LARS
    over a joint RealNVP fitted to a 2-D mixture of Gaussians; KL(q || p) and Z table."""
    output:
        table=report(L.appendix("mog2d/table_mog2d.md"), caption="../report/mog2d.rst",
                     category="Appendix D"),
        figure=report(L.appendix("mog2d/fig_mog2d.png"), caption="../report/mog2d.rst",
                      category="Appendix D"),
    log:
        f"{P.runs}/logs/mog2d.log",
    params:
        steps=P.top["report"]["mog_steps"],
        seed=P.top["report"]["mog_seed"],
        z_samples=P.top["report"]["mog_z_samples"],
        test_samples=P.top["report"]["mog_test_samples"],
    conda:
        "../envs/larsvae.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} larsvae mog2d --threads {threads} --device cpu"
        " --steps {params.steps} --seed {params.seed} --z-samples {params.z_samples}"
        " --test-samples {params.test_samples} --table {output.table:q}"
        " --figure {output.figure:q} > {log:q} 2>&1"
