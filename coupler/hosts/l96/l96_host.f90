!> The two-scale Lorenz-96 host (host_driver runs it): a truth mode that writes training data
!> and a climatology sample, and a coarse mode whose coupling term comes from a closure (the NN
!> through colnn_coupler, none, or a cubic polynomial) with steps-to-failure checks. The K slow
!> variables are the host's "columns", split over MPI ranks in blocks with halos and stepped by
!> l96_dynamics' kernels; every global sum is taken on rank 0 in one order, so results do not
!> depend on the number of ranks.
!>
!> Configuration: the groups &l96_model, &l96_run, &l96_failure (and the coupler's
!> &colnn_coupler). Output: diagnostics.h5 (coarse) or truth.h5 (truth).
module l96_host
  use mpi_f08
  use colnn, only: wp
  use colnn_mpi, only: decompose_columns
  use host_common
  use host_h5
  use host_mpi
  use host_driver
  use climate_stats, only: MAX_PDF_BINS, MAX_ACF_LAGS, pdf_accumulate, hellinger_from_counts, &
                           window_acf, acf_distance, distance_z, pdf_reference_ok
  use l96_dynamics, only: l96_params_t, slow_tendency, coupling_term, truth_tendencies, &
                          rk4_update, RK4_STAGES, X_HALO_LEFT, X_HALO_RIGHT, Y_HALO_LEFT, &
                          Y_HALO_RIGHT
  implicit none
  private

  public :: l96_host_t

  type :: l96_config_t
    ! &l96_model
    type(l96_params_t) :: model
    ! &l96_run
    character(len=16) :: mode = 'coarse'         !< 'truth' | 'coarse'
    character(len=16) :: closure = 'nn'          !< coarse: 'nn' | 'none' | 'cubic'
    character(len=16) :: inputs = 'stencil'      !< NN inputs per column: 'local' | 'stencil' | 'full'
    integer :: stencil_halfwidth = 1
    real(dp) :: dt = 0.005_dp
    integer :: n_steps = 1000, spinup_steps = 0
    integer(i8) :: seed = 1
    character(len=1024) :: init_file = '', output_dir = '.'
    integer :: init_index = 1
    integer :: output_interval = 10, sample_interval = 10
    real(dp) :: cubic_coeffs(4) = 0                !< U = c1 + c2 X + c3 X^2 + c4 X^3
    integer :: inject_nan_step = -1, inject_nan_column = 1
    character(len=8) :: inject_value = 'nan'        !< what is injected: nan, inf, -inf or a number
    !> where: 'state' (the column's state, once), 'nn_input' (the network's inputs of network
    !> column inject_nan_column at every stage from inject_nan_step on: a column the network
    !> has never seen, while the host's state stays as it is) or 'nn_target' (a truth run that
    !> trains online: that column's targets at the update of inject_nan_step)
    character(len=16) :: inject_target = 'state'
    !> truth: an online-training step of the &colnn_coupler network every online_interval
    !> steps after the spin-up on (inputs, true closure) of every network column (0: none); its
    !> model with optimizer state to online.colnn every checkpoint_interval steps and at the end
    integer :: online_interval = 0, checkpoint_interval = 0
    type(batch_keys_t) :: batch                     !< n_runs, init_indices, seeds, run_dirs, ...
    ! &l96_failure
    real(dp) :: max_abs = 50
    logical :: drift_check = .false.
    integer :: drift_window = 1000, drift_sample_interval = 10
    real(dp) :: drift_sigma = 5
    real(dp) :: clim_mean = 0, clim_std = 0, sd_window_mean = 0, sd_window_std = 0
    ! in the drift test's windows: the distribution of x against the truth's (Hellinger
    ! distance on the truth's bins) and its autocorrelation at lags (in drift samples), each as
    ! a one-sided z-score against the same distance over truth windows (climate_stats'
    ! distance_z: the *_dist_mean and *_dist_sd are of the distance to the power 2/3)
    logical :: pdf_check = .false., acf_check = .false.
    integer :: n_pdf_bins = 0, n_acf_lags = 0
    real(dp) :: pdf_edges(MAX_PDF_BINS - 1) = 0, clim_pdf(MAX_PDF_BINS) = 0
    real(dp) :: pdf_dist_mean = 0, pdf_dist_sd = 0
    integer :: acf_lags(MAX_ACF_LAGS) = 0
    real(dp) :: clim_acf(MAX_ACF_LAGS) = 0, acf_dist_mean = 0, acf_dist_sd = 0
  end type l96_config_t

  ! a coarse record, in this order (a truth sample is x(1:K) then U(1:K))
  integer, parameter :: R_MEAN = 1, R_STD = 2, R_BIAS = 3, R_RMSE = 4, R_ENERGY = 5, &
                        R_MAX_ABS = 6, R_U_MEAN = 7, N_RECORD = 7
  character(len=*), parameter :: RECORD_NAMES(N_RECORD) = [character(len=16) :: 'x_mean', &
    'x_std', 'bias', 'rmse', 'energy', 'max_abs_x', 'u_mean']

  !> The host: its configuration and this rank's state.
  type, extends(host_t) :: l96_host_t
    private
    type(l96_config_t) :: cfg
    integer :: first = 1, n = 0                          !< this rank owns X_first .. X_first+n-1
    integer :: hl = X_HALO_LEFT, hr = X_HALO_RIGHT       !< halo widths of x
    integer :: w = 0, n_in = 1, n_out = 1, ncol = 0      !< stencil halfwidth, NN sizes, NN columns
    real(dp), allocatable :: x(:, :), xs(:, :)           !< the state and a stage's, (1, 1-hl : n+hr)
    real(dp), allocatable :: kx(:, :), u(:)              !< stage tendencies (n, 4); U of a stage
    real(dp), allocatable :: u1(:, :)                    !< the closure at stage 1, (1, n)
    real(dp), allocatable :: y(:, :), ys(:, :), ky(:, :) !< truth: (1, 0 : J*n+2) twice; (J*n, 4)
    integer, allocatable :: counts(:), displs(:)
    real(dp), allocatable :: xg(:, :), ug(:, :)          !< gathered on rank 0: (1, K)
    ! the drift test (rank 0): sums over the current window, the z-scores of the windows so far
    real(dp) :: wsum = 0, wsq = 0, wcount = 0
    integer :: i_win = 0, i_sample = 0
    real(dp), allocatable :: w_time(:), w_zmean(:), w_zstd(:), w_zpdf(:), w_zacf(:)
    real(dp), allocatable :: w_pdf(:, :), w_acf(:, :)   !< each window's pdf and acf (rank 0)
    real(dp), allocatable :: wbuf(:, :)                  !< the window's samples (K, samples)
  contains
    procedure :: name => l96_name
    procedure :: groups => l96_groups
    procedure :: group_io => l96_group_io
    procedure :: settings => l96_settings
    procedure :: validate => l96_validate
    procedure :: setup => l96_setup
    procedure :: for_run => l96_for_run
    procedure :: state_bytes => l96_state_bytes
    procedure :: coupler_spec => l96_coupler_spec
    procedure :: network_columns => l96_network_columns
    procedure :: n_stages => l96_n_stages
    procedure :: start => l96_start
    procedure :: stage_begin => l96_stage_begin
    procedure :: stage_end => l96_stage_end
    procedure :: inject => l96_inject
    procedure :: check_local => l96_check_local
    procedure :: check_finish => l96_check_finish
    procedure :: record => l96_record
    procedure :: summarize => l96_summarize
    procedure :: write_output => l96_write_output
    procedure :: has_closure => l96_has_closure
    procedure :: closure_columns => l96_closure_columns
    procedure :: trains_online => l96_trains_online
    procedure :: online_pairs => l96_online_pairs
  end type l96_host_t

contains

  function l96_name(self) result(name)
    class(l96_host_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'l96'
  end function l96_name

  subroutine l96_groups(self, groups)
    class(l96_host_t), intent(in) :: self
    character(len=GROUP_LEN), allocatable, intent(out) :: groups(:)
    groups = [character(len=GROUP_LEN) :: 'l96_model', 'l96_run', 'l96_failure']
  end subroutine l96_groups

  !> A namelist names variables of its own scope: the keys are locals here, copied from the
  !> configuration and, after a read, back to it by name.
  subroutine l96_group_io(self, group, unit, reading, iostat, iomsg)
    class(l96_host_t), intent(inout) :: self
    character(len=*), intent(in) :: group    !! 'l96_model', 'l96_run' or 'l96_failure'
    integer, intent(in) :: unit
    logical, intent(in) :: reading           !! read the group, else write it
    integer, intent(out) :: iostat
    character(len=*), intent(inout) :: iomsg
    integer :: k, j, stencil_halfwidth, n_steps, spinup_steps, init_index, output_interval, &
               sample_interval, inject_nan_step, inject_nan_column, drift_window, &
               drift_sample_interval, n_runs, init_indices(MAX_RUNS), inject_nan_run, &
               n_pdf_bins, n_acf_lags, acf_lags(MAX_ACF_LAGS)
    real(dp) :: f, h, b, c, dt, cubic_coeffs(4), max_abs, drift_sigma, clim_mean, clim_std, &
                sd_window_mean, sd_window_std, pdf_edges(MAX_PDF_BINS - 1), &
                clim_pdf(MAX_PDF_BINS), pdf_dist_mean, pdf_dist_sd, clim_acf(MAX_ACF_LAGS), &
                acf_dist_mean, acf_dist_sd
    character(len=16) :: mode, closure, inputs
    character(len=8) :: inject_value
    character(len=16) :: inject_target
    integer :: online_interval, checkpoint_interval
    character(len=1024) :: init_file, output_dir
    character(len=DIR_LEN) :: run_dirs(MAX_RUNS)
    integer(i8) :: seed, seeds(MAX_RUNS), max_batch_bytes
    logical :: drift_check, pdf_check, acf_check
    namelist /l96_model/ k, j, f, h, b, c
    namelist /l96_run/ mode, closure, inputs, stencil_halfwidth, dt, n_steps, spinup_steps, &
      seed, init_file, init_index, output_dir, output_interval, sample_interval, cubic_coeffs, &
      inject_nan_step, inject_nan_column, inject_value, inject_target, online_interval, checkpoint_interval, &
      n_runs, init_indices, seeds, run_dirs, &
      inject_nan_run, max_batch_bytes
    namelist /l96_failure/ max_abs, drift_check, drift_window, drift_sample_interval, &
      drift_sigma, clim_mean, clim_std, sd_window_mean, sd_window_std, pdf_check, n_pdf_bins, &
      pdf_edges, clim_pdf, pdf_dist_mean, pdf_dist_sd, acf_check, n_acf_lags, acf_lags, &
      clim_acf, acf_dist_mean, acf_dist_sd

    associate (cfg => self%cfg)
    k = cfg%model%k; j = cfg%model%j; f = cfg%model%f; h = cfg%model%h; b = cfg%model%b
    c = cfg%model%c
    mode = cfg%mode; closure = cfg%closure; inputs = cfg%inputs
    stencil_halfwidth = cfg%stencil_halfwidth; dt = cfg%dt; n_steps = cfg%n_steps
    spinup_steps = cfg%spinup_steps; seed = cfg%seed; init_file = cfg%init_file
    init_index = cfg%init_index; output_dir = cfg%output_dir
    output_interval = cfg%output_interval; sample_interval = cfg%sample_interval
    cubic_coeffs = cfg%cubic_coeffs; inject_nan_step = cfg%inject_nan_step
    inject_nan_column = cfg%inject_nan_column; inject_value = cfg%inject_value; inject_target = cfg%inject_target
    online_interval = cfg%online_interval; checkpoint_interval = cfg%checkpoint_interval
    n_runs = cfg%batch%n_runs; init_indices = cfg%batch%init_indices; seeds = cfg%batch%seeds
    run_dirs = cfg%batch%run_dirs; inject_nan_run = cfg%batch%inject_nan_run
    max_batch_bytes = cfg%batch%max_batch_bytes
    max_abs = cfg%max_abs; drift_check = cfg%drift_check; drift_window = cfg%drift_window
    drift_sample_interval = cfg%drift_sample_interval; drift_sigma = cfg%drift_sigma
    clim_mean = cfg%clim_mean; clim_std = cfg%clim_std; sd_window_mean = cfg%sd_window_mean
    sd_window_std = cfg%sd_window_std
    pdf_check = cfg%pdf_check; n_pdf_bins = cfg%n_pdf_bins; pdf_edges = cfg%pdf_edges
    clim_pdf = cfg%clim_pdf; pdf_dist_mean = cfg%pdf_dist_mean; pdf_dist_sd = cfg%pdf_dist_sd
    acf_check = cfg%acf_check; n_acf_lags = cfg%n_acf_lags; acf_lags = cfg%acf_lags
    clim_acf = cfg%clim_acf; acf_dist_mean = cfg%acf_dist_mean; acf_dist_sd = cfg%acf_dist_sd

    iostat = 0
    select case (group)
    case ('l96_model')
      if (reading) read (unit, nml=l96_model, iostat=iostat, iomsg=iomsg)
      if (.not. reading) write (unit, nml=l96_model)
    case ('l96_run')
      if (reading) read (unit, nml=l96_run, iostat=iostat, iomsg=iomsg)
      if (.not. reading) write (unit, nml=l96_run)
    case ('l96_failure')
      if (reading) read (unit, nml=l96_failure, iostat=iostat, iomsg=iomsg)
      if (.not. reading) write (unit, nml=l96_failure)
    end select
    if (.not. reading) return
    if (iostat /= 0) then
      ! an output_dir read before the error: the error's result.json lands where asked
      if (group == 'l96_run' .and. len_trim(output_dir) > 0) cfg%output_dir = output_dir
      return
    end if

    cfg%model = l96_params_t(k=k, j=j, f=f, h=h, b=b, c=c)
    cfg%mode = mode; cfg%closure = closure; cfg%inputs = inputs
    cfg%stencil_halfwidth = stencil_halfwidth; cfg%dt = dt; cfg%n_steps = n_steps
    cfg%spinup_steps = spinup_steps; cfg%seed = seed; cfg%init_file = init_file
    cfg%init_index = init_index; cfg%output_dir = output_dir
    cfg%output_interval = output_interval; cfg%sample_interval = sample_interval
    cfg%cubic_coeffs = cubic_coeffs; cfg%inject_nan_step = inject_nan_step
    cfg%inject_nan_column = inject_nan_column; cfg%inject_value = inject_value; cfg%inject_target = inject_target
    cfg%online_interval = online_interval; cfg%checkpoint_interval = checkpoint_interval
    cfg%batch = batch_keys_t(n_runs=n_runs, init_indices=init_indices, seeds=seeds, &
                             run_dirs=run_dirs, inject_nan_run=inject_nan_run, &
                             max_batch_bytes=max_batch_bytes)
    cfg%max_abs = max_abs; cfg%drift_check = drift_check; cfg%drift_window = drift_window
    cfg%drift_sample_interval = drift_sample_interval; cfg%drift_sigma = drift_sigma
    cfg%clim_mean = clim_mean; cfg%clim_std = clim_std; cfg%sd_window_mean = sd_window_mean
    cfg%sd_window_std = sd_window_std
    cfg%pdf_check = pdf_check; cfg%n_pdf_bins = n_pdf_bins; cfg%pdf_edges = pdf_edges
    cfg%clim_pdf = clim_pdf; cfg%pdf_dist_mean = pdf_dist_mean; cfg%pdf_dist_sd = pdf_dist_sd
    cfg%acf_check = acf_check; cfg%n_acf_lags = n_acf_lags; cfg%acf_lags = acf_lags
    cfg%clim_acf = clim_acf; cfg%acf_dist_mean = acf_dist_mean; cfg%acf_dist_sd = acf_dist_sd
    end associate
  end subroutine l96_group_io

  function l96_settings(self) result(s)
    class(l96_host_t), intent(in) :: self
    type(run_settings_t) :: s
    s = run_settings_t(mode=self%cfg%mode, closure=self%cfg%closure, run_group='l96_run', &
                       columns_key='k', dt=self%cfg%dt, n_steps=self%cfg%n_steps, &
                       spinup_steps=self%cfg%spinup_steps, &
                       output_interval=self%cfg%output_interval, &
                       sample_interval=self%cfg%sample_interval, &
                       init_index=self%cfg%init_index, seed=self%cfg%seed, &
                       output_dir=self%cfg%output_dir, n_columns=self%cfg%model%k, &
                       inject_nan_step=self%cfg%inject_nan_step, &
                       inject_nan_column=self%cfg%inject_nan_column, &
                       inject_value=self%cfg%inject_value, &
                       inject_target=self%cfg%inject_target, &
                       online_interval=self%cfg%online_interval, &
                       checkpoint_interval=self%cfg%checkpoint_interval, record_size=N_RECORD, &
                       batch=self%cfg%batch)
    if (self%cfg%mode == 'truth') s%record_size = 2 * self%cfg%model%k
  end function l96_settings

  subroutine l96_validate(self, path, stat, errmsg)
    class(l96_host_t), intent(in) :: self
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    associate (cfg => self%cfg, p => self%cfg%model)
      stat = 1
      if (p%k < 4) then
        errmsg = key_error(path, 'l96_model', 'k', 'must be >= 4, got '//itoa(p%k))
      else if (p%j < 1) then
        errmsg = key_error(path, 'l96_model', 'j', 'must be >= 1, got '//itoa(p%j))
      else if (.not. (p%b > 0 .and. p%c > 0 .and. is_finite(p%f) .and. is_finite(p%h))) then
        errmsg = key_error(path, 'l96_model', 'b, c, f, h', 'b and c must be > 0, f and h finite')
      else if (all(cfg%closure /= [character(len=16) :: 'nn', 'none', 'cubic'])) then
        errmsg = key_error(path, 'l96_run', 'closure', "must be 'nn', 'none' or 'cubic', got '"// &
                           trim(cfg%closure)//"'")
      else if (all(cfg%inputs /= [character(len=16) :: 'local', 'stencil', 'full'])) then
        errmsg = key_error(path, 'l96_run', 'inputs', "must be 'local', 'stencil' or 'full', "// &
                           "got '"//trim(cfg%inputs)//"'")
      else if (cfg%stencil_halfwidth < 1 .or. 2 * cfg%stencil_halfwidth + 1 > p%k) then
        errmsg = key_error(path, 'l96_run', 'stencil_halfwidth', 'must be in 1 .. (k-1)/2, got '// &
                           itoa(cfg%stencil_halfwidth))
      else if (.not. (cfg%dt > 0 .and. cfg%dt <= 0.1_dp)) then
        errmsg = key_error(path, 'l96_run', 'dt', 'must be in (0, 0.1]')
      else if (.not. (cfg%max_abs > 0)) then
        errmsg = key_error(path, 'l96_failure', 'max_abs', 'must be > 0')
      else if (cfg%drift_check .and. (cfg%drift_window < 1 .or. cfg%drift_sample_interval < 1 &
               .or. mod(cfg%drift_window, cfg%drift_sample_interval) /= 0)) then
        errmsg = key_error(path, 'l96_failure', 'drift_window', 'must be a positive multiple of '// &
                           'drift_sample_interval')
      else if (cfg%drift_check .and. .not. (cfg%drift_sigma > 0 .and. cfg%clim_std > 0 .and. &
               cfg%sd_window_mean > 0 .and. cfg%sd_window_std > 0)) then
        errmsg = key_error(path, 'l96_failure', 'drift_sigma, clim_std, sd_window_mean, '// &
                           'sd_window_std', 'the drift test needs all of them > 0 (from a '// &
                           'calibration on truth runs)')
      else if ((cfg%pdf_check .or. cfg%acf_check) .and. .not. cfg%drift_check) then
        errmsg = key_error(path, 'l96_failure', merge('pdf_check', 'acf_check', cfg%pdf_check), &
                           "runs in the drift test's windows: needs drift_check = .true.")
      else if (cfg%pdf_check .and. .not. (cfg%n_pdf_bins >= 2 .and. &
               cfg%n_pdf_bins <= MAX_PDF_BINS)) then
        errmsg = key_error(path, 'l96_failure', 'n_pdf_bins', 'must be in 2 .. '// &
                           itoa(MAX_PDF_BINS)//', got '//itoa(cfg%n_pdf_bins))
      else if (cfg%pdf_check .and. .not. pdf_reference_ok(cfg%pdf_edges(1:cfg%n_pdf_bins - 1), &
                                                           cfg%clim_pdf(1:cfg%n_pdf_bins))) then
        errmsg = key_error(path, 'l96_failure', 'pdf_edges, clim_pdf', 'need n_pdf_bins - 1 '// &
                           'ascending finite edges and n_pdf_bins probabilities >= 0 summing to 1')
      else if (cfg%pdf_check .and. .not. (cfg%pdf_dist_sd > 0 .and. cfg%pdf_dist_mean >= 0)) then
        errmsg = key_error(path, 'l96_failure', 'pdf_dist_mean, pdf_dist_sd', 'must be >= 0 '// &
                           'and > 0 (from a calibration on truth runs)')
      else if (cfg%acf_check .and. .not. (cfg%n_acf_lags >= 1 .and. &
               cfg%n_acf_lags <= MAX_ACF_LAGS)) then
        errmsg = key_error(path, 'l96_failure', 'n_acf_lags', 'must be in 1 .. '// &
                           itoa(MAX_ACF_LAGS)//', got '//itoa(cfg%n_acf_lags))
      else if (cfg%acf_check .and. .not. acf_ok(cfg)) then
        errmsg = key_error(path, 'l96_failure', 'acf_lags, clim_acf', 'need n_acf_lags lags '// &
                           'in 1 .. drift_window / drift_sample_interval - 1 and as many '// &
                           'autocorrelations in [-1, 1]')
      else if (cfg%acf_check .and. .not. (cfg%acf_dist_sd > 0 .and. cfg%acf_dist_mean >= 0)) then
        errmsg = key_error(path, 'l96_failure', 'acf_dist_mean, acf_dist_sd', 'must be >= 0 '// &
                           'and > 0 (from a calibration on truth runs)')
      else
        stat = 0
        errmsg = ''
      end if
    end associate
  end subroutine l96_validate

  logical function acf_ok(cfg)
    type(l96_config_t), intent(in) :: cfg
    integer :: n
    n = cfg%n_acf_lags
    acf_ok = all(cfg%acf_lags(1:n) >= 1) .and. &
             all(cfg%acf_lags(1:n) < cfg%drift_window / cfg%drift_sample_interval) .and. &
             all(abs(cfg%clim_acf(1:n)) <= 1)
  end function acf_ok

  !> Decomposition, halos and every array of the run (nothing is allocated after this), the
  !> initial state.
  subroutine l96_setup(self, stat, errmsg)
    class(l96_host_t), intent(inout) :: self
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: i, k, nf
    real(dp), allocatable :: init(:)
    integer, allocatable :: shp(:)
    associate (cfg => self%cfg)
    k = cfg%model%k
    call decompose_columns(k, self%comm, self%first, self%n, stat, errmsg)
    if (stat /= 0) return
    self%w = 0
    if (cfg%inputs == 'stencil') self%w = cfg%stencil_halfwidth
    self%hl = max(X_HALO_LEFT, self%w)
    self%hr = max(X_HALO_RIGHT, self%w)
    ! the smallest block of the balanced split, so that every rank takes the same decision
    if (k / self%nranks < max(self%hl, self%hr, 2)) then
      stat = 1
      errmsg = 'k = '//itoa(k)//' over '//itoa(self%nranks)//' ranks leaves a rank '// &
               itoa(k / self%nranks)//' columns, fewer than its halo ('// &
               itoa(max(self%hl, self%hr, 2))//'): use fewer ranks'
      return
    end if
    if (((cfg%mode == 'coarse' .and. cfg%closure == 'nn') .or. &
         (cfg%mode == 'truth' .and. cfg%online_interval > 0)) .and. cfg%inputs == 'full' .and. &
        self%nranks > 1) then
      stat = 1
      errmsg = "inputs = 'full' (one column holding the whole state) runs on one rank only"
      return
    end if
    allocate (self%x(1, 1 - self%hl:self%n + self%hr), self%xs(1, 1 - self%hl:self%n + self%hr), &
              self%kx(self%n, RK4_STAGES), self%u(self%n), self%u1(1, self%n), source=0.0_dp, &
              stat=stat)
    if (stat /= 0) then
      errmsg = 'cannot allocate the state of k = '//itoa(k)//' columns'
      return
    end if
    if (cfg%inputs == 'full') then
      self%n_in = k
      self%n_out = k
      self%ncol = 1
    else
      self%n_in = 2 * self%w + 1
      self%n_out = 1
      self%ncol = self%n
    end if
    call gather_layout(1, self%n, self%comm, self%counts, self%displs)
    allocate (self%xg(1, merge(k, 1, self%rank == 0)), self%ug(1, merge(k, 1, self%rank == 0)))
    nf = cfg%model%j * self%n
    if (cfg%mode == 'truth') then
      allocate (self%y(1, 1 - Y_HALO_LEFT:nf + Y_HALO_RIGHT), &
                self%ys(1, 1 - Y_HALO_LEFT:nf + Y_HALO_RIGHT), self%ky(nf, RK4_STAGES), &
                source=0.0_dp, stat=stat)
      if (stat /= 0) then
        errmsg = 'cannot allocate the fast variables of j = '//itoa(cfg%model%j)
        return
      end if
    end if
    i = 0
    if (cfg%drift_check) i = cfg%n_steps / cfg%drift_window
    allocate (self%w_time(i), self%w_zmean(i), self%w_zstd(i), self%w_zpdf(i), &
              self%w_zacf(i), source=ieee_nan())
    allocate (self%w_pdf(merge(cfg%n_pdf_bins, 0, cfg%pdf_check), i), &
              self%w_acf(merge(cfg%n_acf_lags, 0, cfg%acf_check), i), source=ieee_nan())
    i = 0
    if ((cfg%pdf_check .or. cfg%acf_check) .and. self%rank == 0) &
      i = cfg%drift_window / cfg%drift_sample_interval
    allocate (self%wbuf(merge(k, 0, i > 0), i))

    ! initial state: from a truth file (column init_index of its x), or keyed random numbers
    if (len_trim(cfg%init_file) > 0) then
      call h5_dataset_shape(trim(cfg%init_file), 'x', shp, stat, errmsg)
      if (stat == 0) then
        if (size(shp) /= 2 .or. shp(1) /= k) then
          stat = 1
          errmsg = trim(cfg%init_file)//': dataset x must be (samples, k = '//itoa(k)//')'
        else if (cfg%init_index > shp(2)) then
          stat = 1
          errmsg = trim(cfg%init_file)//': init_index '//itoa(cfg%init_index)//' > '// &
                   itoa(shp(2))//' samples'
        end if
      end if
      if (stat /= 0) return
      allocate (init(product(shp)))
      call h5_read_doubles(trim(cfg%init_file), 'x', init, stat, errmsg)
      if (stat /= 0) return
      self%x(1, 1:self%n) = init((cfg%init_index - 1) * k + self%first: &
                                 (cfg%init_index - 1) * k + self%first + self%n - 1)
      if (.not. all(is_finite(self%x(1, 1:self%n)))) then
        stat = 1
        errmsg = trim(cfg%init_file)//': the initial state has non-finite values'
        return
      end if
    else
      do i = 1, self%n
        self%x(1, i) = cfg%model%f / 4 + 2 * host_normal(cfg%seed, 1_i8, int(self%first + i - 1, i8))
      end do
    end if
    if (cfg%mode == 'truth') then
      do i = 1, nf
        self%y(1, i) = 0.1_dp * host_normal(cfg%seed, 2_i8, int((self%first - 1) * cfg%model%j + i, i8))
      end do
    end if
    stat = 0
    end associate
  end subroutine l96_setup

  function l96_coupler_spec(self) result(spec)
    class(l96_host_t), intent(in) :: self
    type(coupler_spec_t) :: spec
    spec%n_in = self%n_in
    spec%n_out = self%n_out
    spec%passes = 'the '//trim(self%cfg%inputs)//' inputs of this host'
    if (.not. self%has_closure()) spec%passes = spec%passes//'; its closure for fallback '// &
      'and ramp_steps is the cubic fit, and l96_run cubic_coeffs are not set'
    spec%output_name = 'u'
  end function l96_coupler_spec

  subroutine l96_for_run(self, init_index, seed)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: init_index
    integer(i8), intent(in) :: seed
    self%cfg%init_index = init_index
    self%cfg%seed = seed
  end subroutine l96_for_run

  !> What l96_setup allocates on the rank with the most columns.
  function l96_state_bytes(self) result(bytes)
    class(l96_host_t), intent(in) :: self
    integer(i8) :: bytes
    integer(i8) :: n, k, halo, nn
    k = self%cfg%model%k
    n = (k + self%nranks - 1) / self%nranks
    halo = max(X_HALO_LEFT + X_HALO_RIGHT, 2 * self%cfg%stencil_halfwidth)
    nn = (2 * self%cfg%stencil_halfwidth + 2) * n       ! network inputs and output per rank
    if (self%cfg%inputs == 'full') nn = 2 * k
    bytes = 8 * (2 * (n + halo) + 6 * n) + storage_size(1.0_wp) / 8 * nn
    if (self%rank == 0) bytes = bytes + 8 * 2 * k
    if (self%cfg%mode == 'truth') bytes = bytes + 8 * (6 * self%cfg%model%j * n + 6)
    if (self%cfg%drift_check) bytes = bytes + 8 * 5 * (self%cfg%n_steps / self%cfg%drift_window)
    if (self%rank == 0 .and. (self%cfg%pdf_check .or. self%cfg%acf_check)) &
      bytes = bytes + 8 * k * (self%cfg%drift_window / self%cfg%drift_sample_interval)
  end function l96_state_bytes

  subroutine l96_network_columns(self, n_columns, column_offset)
    class(l96_host_t), intent(in) :: self
    integer, intent(out) :: n_columns, column_offset
    n_columns = self%ncol
    column_offset = self%first - 1
  end subroutine l96_network_columns

  integer function l96_n_stages(self)
    class(l96_host_t), intent(in) :: self
    l96_n_stages = RK4_STAGES
  end function l96_n_stages

  subroutine l96_start(self, run)
    class(l96_host_t), intent(inout) :: self
    type(host_run_t), intent(inout) :: run
    if (self%cfg%mode == 'coarse') self%u1 = ieee_nan()   ! no closure yet at step 0's record
  end subroutine l96_start

  ! ---------------------------------------------------------------------------------------
  ! one step: RK4 over l96_dynamics' kernels, the halos exchanged before every stage; the
  ! driver calls the network between a stage's begin and end

  !> Truth: nothing before the end. Coarse: the halos of the stage's state, then its closure
  !> (the network's inputs, or the closure itself).
  subroutine l96_stage_begin(self, step, stage, nn_in)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: step, stage
    real(wp), intent(inout), contiguous :: nn_in(:, :)
    if (self%cfg%mode == 'truth') return
    if (stage == 1) then
      call closure_begin(self, self%x, nn_in)
    else
      call closure_begin(self, self%xs, nn_in)
    end if
  end subroutine l96_stage_begin

  !> Truth: the whole stage. Coarse: the closure from the network's outputs, the tendency and
  !> the RK4 update.
  subroutine l96_stage_end(self, step, stage, nn_out)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: step, stage
    real(wp), intent(in), contiguous :: nn_out(:, :)
    integer :: n, nf
    n = self%n
    if (self%cfg%mode == 'truth') then
      nf = self%cfg%model%j * n
      if (stage == 1) then
        call truth_stage(self, stage, self%x, self%y)
      else
        call truth_stage(self, stage, self%xs, self%ys)
      end if
      call rk4_update(stage, self%cfg%dt, self%y(1, 1:nf), self%ky, self%ys(1, 1:nf))
    else
      if (self%cfg%closure == 'nn') then
        if (self%cfg%inputs == 'full') then
          self%u = real(nn_out(:, 1), dp)
        else
          self%u = real(nn_out(1, :), dp)
        end if
      end if
      if (stage == 1) self%u1(1, :) = self%u
      if (stage == 1) then
        call slow_tendency(self%cfg%model%f, self%x(1, -1:), self%u, self%kx(:, stage))
      else
        call slow_tendency(self%cfg%model%f, self%xs(1, -1:), self%u, self%kx(:, stage))
      end if
    end if
    call rk4_update(stage, self%cfg%dt, self%x(1, 1:n), self%kx, self%xs(1, 1:n))
  end subroutine l96_stage_end

  !> The tendencies of truth stage `stage` from its state (x, y), halos exchanged first.
  subroutine truth_stage(self, stage, x, y)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: stage
    real(dp), intent(inout) :: x(:, 1 - self%hl:), y(:, 1 - Y_HALO_LEFT:)
    call ring_exchange(x, self%n, self%hl, self%hr, self%comm)
    call ring_exchange(y, self%cfg%model%j * self%n, Y_HALO_LEFT, Y_HALO_RIGHT, self%comm)
    call truth_tendencies(self%cfg%model, x(1, -1:), y(1, :), self%u, self%kx(:, stage), &
                          self%ky(:, stage))
  end subroutine truth_stage

  !> The halos of the stage's state x, then the closure U(x) on this rank's columns into
  !> self%u, or for the network its inputs into nn_in.
  subroutine closure_begin(self, x, nn_in)
    class(l96_host_t), intent(inout) :: self
    real(dp), intent(inout) :: x(:, 1 - self%hl:)
    real(wp), intent(inout), contiguous :: nn_in(:, :)
    integer :: k, i
    call ring_exchange(x, self%n, self%hl, self%hr, self%comm)
    associate (c => self%cfg%cubic_coeffs)
    select case (self%cfg%closure)
    case ('none')
      self%u = 0
    case ('cubic')
      do k = 1, self%n
        self%u(k) = c(1) + x(1, k) * (c(2) + x(1, k) * (c(3) + x(1, k) * c(4)))
      end do
    case ('nn')
      if (self%cfg%inputs == 'full') then
        nn_in(:, 1) = real(x(1, 1:self%n), wp)
      else
        do k = 1, self%n
          do i = -self%w, self%w
            nn_in(i + self%w + 1, k) = real(x(1, k + i), wp)
          end do
        end do
      end if
    end select
    end associate
  end subroutine closure_begin

  !> Fallback and ramp take the cubic fit of the coarse mode (cubic_coeffs), when it is set.
  logical function l96_has_closure(self)
    class(l96_host_t), intent(in) :: self
    l96_has_closure = any(self%cfg%cubic_coeffs /= 0)
  end function l96_has_closure

  !> The cubic closure U(X_k) of the stage's state in the network's output layout (after
  !> stage_begin, which exchanged the halos).
  subroutine l96_closure_columns(self, step, stage, closure)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: step, stage
    real(wp), intent(inout), contiguous :: closure(:, :)
    integer :: k
    real(dp) :: xk
    associate (c => self%cfg%cubic_coeffs)
    do k = 1, self%n
      if (stage == 1) then
        xk = self%x(1, k)
      else
        xk = self%xs(1, k)
      end if
      if (self%cfg%inputs == 'full') then
        closure(k, 1) = real(c(1) + xk * (c(2) + xk * (c(3) + xk * c(4))), wp)
      else
        closure(1, k) = real(c(1) + xk * (c(2) + xk * (c(3) + xk * c(4))), wp)
      end if
    end do
    end associate
  end subroutine l96_closure_columns

  !> A truth run knows the true coupling term U of every column: it can train online.
  logical function l96_trains_online(self)
    class(l96_host_t), intent(in) :: self
    l96_trains_online = self%cfg%mode == 'truth'
  end function l96_trains_online

  !> The network's inputs of the current truth state (as a coarse run would pass them) and the
  !> true coupling term U_k of each column (what the network learns), in its layout.
  subroutine l96_online_pairs(self, nn_in, targets)
    class(l96_host_t), intent(inout) :: self
    real(wp), intent(inout), contiguous :: nn_in(:, :), targets(:, :)
    integer :: k, i
    call ring_exchange(self%x, self%n, self%hl, self%hr, self%comm)
    call coupling_term(self%cfg%model, self%y(1, :), self%u)
    if (self%cfg%inputs == 'full') then
      nn_in(:, 1) = real(self%x(1, 1:self%n), wp)
      targets(:, 1) = real(self%u, wp)
    else
      do k = 1, self%n
        do i = -self%w, self%w
          nn_in(i + self%w + 1, k) = real(self%x(1, k + i), wp)
        end do
        targets(1, k) = real(self%u(k), wp)
      end do
    end if
  end subroutine l96_online_pairs

  subroutine l96_inject(self, column, value)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: column
    real(dp), intent(in) :: value
    integer :: k
    k = column - self%first + 1
    if (k >= 1 .and. k <= self%n) self%x(1, k) = value
  end subroutine l96_inject

  ! ---------------------------------------------------------------------------------------
  ! steps to failure

  !> Truth: |x| <= max_abs (severity 1). Coarse: non-finite x (2), |x| > max_abs (1, with
  !> values(1) = max |x| over the finite values).
  subroutine l96_check_local(self, step, severity, values)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: step
    integer, intent(out) :: severity
    real(dp), intent(out) :: values(N_CHECK_VALUES)
    real(dp) :: maxabs
    integer :: k
    values = 0
    severity = 0
    if (self%cfg%mode == 'truth') then
      if (.not. all(abs(self%x(1, 1:self%n)) <= self%cfg%max_abs)) severity = 1
      return
    end if
    maxabs = 0
    do k = 1, self%n
      if (.not. is_finite(self%x(1, k))) then
        severity = 2
      else
        maxabs = max(maxabs, abs(self%x(1, k)))
      end if
    end do
    if (severity == 0 .and. maxabs > self%cfg%max_abs) severity = 1
    values(1) = maxabs
  end subroutine l96_check_local

  !> The failure of the reduced check, else (coarse) the drift test at its intervals.
  subroutine l96_check_finish(self, step, severity, values, failure)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: step
    integer, intent(in) :: severity
    real(dp), intent(in) :: values(N_CHECK_VALUES)
    type(failure_t), intent(out) :: failure
    if (self%cfg%mode == 'truth') then
      if (severity > 0) failure = failure_t(.true., 'bounds', 'x', 'the truth run left '// &
                                            '|x| <= max_abs (is dt too large?)')
      return
    end if
    if (severity == 2) then
      failure = failure_t(.true., 'nonfinite', 'x', 'x is not finite')
    else if (severity == 1) then
      failure = failure_t(.true., 'bounds', 'x', '|x| = '//ftoa(values(1))//' > max_abs = '// &
                          ftoa(self%cfg%max_abs))
    else if (self%cfg%drift_check .and. mod(step, self%cfg%drift_sample_interval) == 0) then
      call drift_test(self, step, failure)
    end if
  end subroutine l96_check_finish

  !> Samples the state into the current window; at a window's end, its mean and std against
  !> the truth climatology in units of their spread over truth windows, then (where asked) its
  !> distribution and its autocorrelation (collective). The first criterion that fails names
  !> the failure: reason 'drift' (mean, std), 'distribution' or 'autocorrelation'.
  subroutine drift_test(self, step, failure)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: step
    type(failure_t), intent(inout) :: failure
    real(dp) :: wmean, wstd, zm, zs, zp, za, dist, counts(MAX_PDF_BINS)
    integer :: nb, nl
    associate (cfg => self%cfg)
    call gather_columns_dp(self%x(:, 1:self%n), self%xg, self%counts, self%displs, self%comm)
    if (self%rank == 0) then
      self%wsum = self%wsum + sum(self%xg(1, :))
      self%wsq = self%wsq + sum(self%xg(1, :)**2)
      self%wcount = self%wcount + cfg%model%k
      if (size(self%wbuf) > 0) then
        self%i_sample = self%i_sample + 1
        self%wbuf(:, self%i_sample) = self%xg(1, :)
      end if
      if (mod(step, cfg%drift_window) == 0) then
        wmean = self%wsum / self%wcount
        wstd = sqrt(max(self%wsq / self%wcount - wmean**2, 0.0_dp))
        zm = (wmean - cfg%clim_mean) / cfg%sd_window_mean
        zs = (wstd - cfg%clim_std) / cfg%sd_window_std
        zp = ieee_nan()
        za = ieee_nan()
        nb = cfg%n_pdf_bins
        nl = cfg%n_acf_lags
        self%i_win = self%i_win + 1
        if (cfg%pdf_check) then
          counts = 0
          call pdf_accumulate(self%wbuf, cfg%pdf_edges(1:nb - 1), counts(1:nb))
          dist = hellinger_from_counts(counts(1:nb), cfg%clim_pdf(1:nb))
          zp = distance_z(dist, cfg%pdf_dist_mean, cfg%pdf_dist_sd)
          self%w_pdf(:, self%i_win) = counts(1:nb) / size(self%wbuf)
        end if
        if (cfg%acf_check) then
          self%w_acf(:, self%i_win) = window_acf(self%wbuf, cfg%acf_lags(1:nl))
          dist = acf_distance(self%w_acf(:, self%i_win), cfg%clim_acf(1:nl))
          za = distance_z(dist, cfg%acf_dist_mean, cfg%acf_dist_sd)
        end if
        self%w_time(self%i_win) = step * cfg%dt
        self%w_zmean(self%i_win) = zm
        self%w_zstd(self%i_win) = zs
        self%w_zpdf(self%i_win) = zp
        self%w_zacf(self%i_win) = za
        self%wsum = 0; self%wsq = 0; self%wcount = 0
        self%i_sample = 0
        if (abs(zm) > cfg%drift_sigma) then
          failure = failure_t(.true., 'drift', 'x_mean', 'window mean of x '//ftoa(wmean)// &
                              ' is '//ftoa(zm)//' sd from the truth climatology (threshold '// &
                              ftoa(cfg%drift_sigma)//')')
        else if (abs(zs) > cfg%drift_sigma) then
          failure = failure_t(.true., 'drift', 'x_std', 'window std of x '//ftoa(wstd)// &
                              ' is '//ftoa(zs)//' sd from the truth climatology (threshold '// &
                              ftoa(cfg%drift_sigma)//')')
        else if (zp > cfg%drift_sigma) then
          failure = failure_t(.true., 'distribution', 'x_pdf', "the window's distribution "// &
                              'of x is '//ftoa(zp)//" sd further from the truth's "// &
                              '(Hellinger) than truth windows are (threshold '// &
                              ftoa(cfg%drift_sigma)//')')
        else if (za > cfg%drift_sigma) then
          failure = failure_t(.true., 'autocorrelation', 'x_acf', "the window's "// &
                              'autocorrelation of x is '//ftoa(za)//' sd further from the '// &
                              "truth's than truth windows are (threshold "// &
                              ftoa(cfg%drift_sigma)//')')
        end if
      end if
    end if
    call failure_bcast(failure, self%comm)
    end associate
  end subroutine drift_test

  ! ---------------------------------------------------------------------------------------
  ! diagnostics and output

  !> Coarse: the diagnostics of the state (RECORD_NAMES). Truth: the sample x(1:K), U(1:K).
  subroutine l96_record(self, step, values)
    class(l96_host_t), intent(inout) :: self
    integer, intent(in) :: step
    real(dp), intent(inout) :: values(:)
    real(dp) :: m
    integer :: k
    k = self%cfg%model%k
    if (self%cfg%mode == 'truth') then
      call coupling_term(self%cfg%model, self%y(1, :), self%u)
      self%u1(1, :) = self%u
    end if
    call gather_columns_dp(self%x(:, 1:self%n), self%xg, self%counts, self%displs, self%comm)
    call gather_columns_dp(self%u1, self%ug, self%counts, self%displs, self%comm)
    if (self%rank /= 0) return
    if (self%cfg%mode == 'truth') then
      values(1:k) = self%xg(1, :)
      values(k + 1:2 * k) = self%ug(1, :)
      return
    end if
    associate (xg => self%xg(1, :), clim_mean => self%cfg%clim_mean)
      m = sum(xg) / k
      values(R_MEAN) = m
      values(R_STD) = sqrt(max(sum((xg - m)**2) / k, 0.0_dp))
      values(R_BIAS) = m - clim_mean
      values(R_RMSE) = sqrt(sum((xg - clim_mean)**2) / k)
      values(R_ENERGY) = 0.5_dp * sum(xg**2) / k
      values(R_MAX_ABS) = maxval(abs(xg))
      values(R_U_MEAN) = sum(self%ug(1, :)) / k
    end associate
  end subroutine l96_record

  subroutine l96_summarize(self, run)
    class(l96_host_t), intent(inout) :: self
    type(host_run_t), intent(inout) :: run
    if (self%cfg%mode == 'truth') return
    call run%result%clear_extras()
    call run%result%add_extra('final_window_z_mean', last(self%w_zmean(1:self%i_win)))
    call run%result%add_extra('final_window_z_std', last(self%w_zstd(1:self%i_win)))
    if (self%cfg%pdf_check) &
      call run%result%add_extra('final_window_z_pdf', last(self%w_zpdf(1:self%i_win)))
    if (self%cfg%acf_check) &
      call run%result%add_extra('final_window_z_acf', last(self%w_zacf(1:self%i_win)))
    call run%result%add_extra('mean_x', mean_finite(run%records%series(R_MEAN)))
    call run%result%add_extra('std_x', mean_finite(run%records%series(R_STD)))
  end subroutine l96_summarize

  subroutine l96_write_output(self, run, out)
    class(l96_host_t), intent(inout) :: self
    type(host_run_t), intent(in) :: run
    type(h5_out_t), intent(inout) :: out
    integer :: i, k, n
    associate (cfg => self%cfg, values => run%records%values)
    k = cfg%model%k
    n = run%records%n
    call out%dim('time', run%records%time(1:n))
    if (cfg%mode == 'truth') then
      call out%dim('k', [(real(i, dp), i = 1, k)])
      call out%put2('x', values(1:k, 1:n), [character(len=8) :: 'k', 'time'])
      call out%put2('u', values(k + 1:2 * k, 1:n), [character(len=8) :: 'k', 'time'])
      call out%attr_str('host', 'l96')
      call out%attr_real('k', real(k, dp))
      call out%attr_real('j', real(cfg%model%j, dp))
      call out%attr_real('f', cfg%model%f)
      call out%attr_real('h', cfg%model%h)
      call out%attr_real('b', cfg%model%b)
      call out%attr_real('c', cfg%model%c)
      call out%attr_real('dt', cfg%dt)
      call out%attr_real('sample_interval', real(cfg%sample_interval, dp))
      call out%attr_real('seed', real(cfg%seed, dp))
      return
    end if
    do i = 1, N_RECORD
      call out%put1(trim(RECORD_NAMES(i)), values(i, 1:n), 'time')
    end do
    call out%dim('window_end', self%w_time(1:self%i_win))
    call out%put1('drift_z_mean', self%w_zmean(1:self%i_win), 'window_end')
    call out%put1('drift_z_std', self%w_zstd(1:self%i_win), 'window_end')
    if (cfg%pdf_check) then
      call out%put1('drift_z_pdf', self%w_zpdf(1:self%i_win), 'window_end')
      call out%dim('pdf_bin', [(real(i, dp), i = 1, cfg%n_pdf_bins)])
      call out%put2('window_pdf', self%w_pdf(:, 1:self%i_win), &
                    [character(len=10) :: 'pdf_bin', 'window_end'])
    end if
    if (cfg%acf_check) then
      call out%put1('drift_z_acf', self%w_zacf(1:self%i_win), 'window_end')
      call out%dim('acf_lag', real(cfg%acf_lags(1:cfg%n_acf_lags), dp) * &
                              cfg%drift_sample_interval * cfg%dt)
      call out%put2('window_acf', self%w_acf(:, 1:self%i_win), &
                    [character(len=10) :: 'acf_lag', 'window_end'])
    end if
    call out%dim('k', [(real(i, dp), i = 1, k)])
    call out%put1('x_final', self%xg(1, :), 'k')
    call out%attr_str('host', 'l96')
    call out%attr_str('closure', trim(cfg%closure))
    call out%attr_str('status', trim(run%result%status))
    call out%attr_real('dt', cfg%dt)
    call out%attr_real('clim_mean', cfg%clim_mean)
    call out%attr_real('clim_std', cfg%clim_std)
    call out%attr_real('failure_step', real(run%result%failure_step, dp))
    end associate
  end subroutine l96_write_output
end module l96_host
