"""Diffusion: processes, losses, samplers, solvers and the Gaussian-mixture oracle.

Time convention: t in [0, 1], t = 0 is data, t = 1 is noise, x_t = alpha(t) x0 + sigma(t) eps.
"""
from jaxgen.diffusion.processes import (  # noqa: F401
    Process,
    DiscreteVP,
    ContinuousVP,
    VE,
    EDM,
    RectifiedFlow,
    make_schedule,
    make_process,
    linear_betas,
    cosine_betas,
    eps_to_x0,
    x0_to_eps,
    eps_to_score,
    score_to_eps,
    x0_to_score,
    score_to_x0,
    x0_eps_to_v,
    v_to_x0,
    v_to_eps,
    x0_eps_to_velocity,
    velocity_to_x0_eps,
    denoiser_from_eps,
    broadcast_to_batch,
)
from jaxgen.diffusion.ddpm import q_sample, ddpm_loss, ddpm_sample, ddpm_posterior  # noqa: F401
from jaxgen.diffusion.oracle import GaussianMixture, oracle_2d, oracle_16d, oracle_gaussian  # noqa: F401
from jaxgen.diffusion.samplers import (  # noqa: F401
    skip_timesteps,
    ddim_step,
    vp_sample,
    ddim_sample,
    ddpm_skip_sample,
    pc_sample,
    edm_sigmas,
    time_grid,
    ode_sample,
    ode_nfe,
    reference_ode_solve,
    ODE_SOLVERS,
)
from jaxgen.diffusion.analytic_dpm import (  # noqa: F401
    estimate_gamma,
    analytic_variance,
    analytic_dpm_sample,
    kl_step_costs,
    optimal_trajectory,
    sn_dpm_loss,
    npr_dpm_loss,
    sn_cov_fn,
    npr_cov_fn,
    fit_cov_head,
)
from jaxgen.diffusion.score_matching import esm_loss, dsm_loss, ssm_loss, ode_log_likelihood, bits_per_dim  # noqa: F401
from jaxgen.diffusion.amed import AMEDPredictor, fit_amed, amed_loss, teacher_trajectory, make_rc_fn  # noqa: F401
from jaxgen.diffusion.wasserstein import (  # noqa: F401
    gaussian_w2,
    vp_gaussian_marginal,
    wasserstein_bound_affine,
    fit_affine_score_dsm,
    true_affine_score,
)
from jaxgen.diffusion.consistency import (  # noqa: F401
    ConsistencySpec,
    karras_sigma,
    consistency_function,
    gaussian_consistency_function,
    edm_denoiser,
    pf_ode_step,
    consistency_sample,
    consistency_sample_sigmas,
    pseudo_huber,
    cd_loss_terms,
    cd_loss,
    ct_loss_terms,
    ct_loss,
    ct_num_scales,
    ct_target_ema,
    ict_num_scales,
    ict_sigma_probs,
    ict_loss,
)
from jaxgen.diffusion.shortcut import (  # noqa: F401
    shortcut_levels,
    shortcut_batch_split,
    shortcut_rows,
    shortcut_targets,
    shortcut_loss,
    shortcut_sample,
)
from jaxgen.diffusion.sid import (  # noqa: F401
    SiDState,
    init_sid_state,
    sid_sigmas,
    sid_generator_loss_terms,
    sid_generator_loss,
    fake_score_loss,
    make_sid_step,
)
from jaxgen.diffusion.interpolants import (  # noqa: F401
    Interpolant,
    make_path,
    velocity_from_denoiser,
    flow_solve,
    flow_solve_adaptive,
    uniform_grid,
)
from jaxgen.diffusion.rectified_flow import (  # noqa: F401
    rf_interpolate,
    rf_velocity_loss,
    reflow_pairs,
    num_pair_batches,
    straightness,
    one_step_generator,
    distill_loss,
)
from jaxgen.diffusion.likelihood import (  # noqa: F401
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    vb_reverse_variances,
    analytic_vb_variance,
    ddpm_vb,
)
