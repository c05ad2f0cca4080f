!> The 2-D shallow-water host (host_driver runs it): a truth mode that writes training data
!> (state and the "unresolved" forcing theta) and a coarse mode whose forcing comes from a
!> closure (the NN through colnn_coupler, none, or the truth forcing) with steps-to-failure
!> checks.
!>
!> Physics (README.md): one reduced-gravity layer on a doubly periodic Arakawa C-grid, f-plane,
!> vector-invariant momentum with the Sadourny (1975) energy-conserving vorticity flux, flux-form
!> continuity, SSP-RK3. The forcing theta = (theta_u, theta_v, theta_h) is added to the three
!> tendencies: in truth, wind stress - linear drag + Laplacian viscosity, and thickness
!> relaxation towards a zero-mean h_eq.
!>
!> Grid and indexing: cell (i, j), i = 1..nx (x), j = 1..ny (y); h(i, j) at the cell centre,
!> u(i, j) on its west face, v(i, j) on its south face, the vorticity at its south-west corner.
!> The y direction is split in strips of rows over the MPI ranks (halo rows of 1); x is periodic
!> within a rank. Every global sum is taken on rank 0 over the gathered fields in one order, so
!> results do not depend on the number of ranks.
!>
!> Configuration: the groups &sw_run, &sw_model, &sw_failure (and the coupler's &colnn_coupler).
!> Output: diagnostics.h5 (coarse) or truth.h5 (truth).
module sw_host
  use mpi_f08
  use colnn, only: wp
  use colnn_mpi, only: decompose_columns
  use host_common
  use host_h5
  use host_mpi
  use host_driver
  use climate_stats, only: MAX_PDF_BINS, MAX_SPEC_WAVES, pdf_accumulate, &
                           hellinger_from_counts, dft_tables, power_spectrum_accumulate, &
                           spectrum_distance, distance_z, pdf_reference_ok
  implicit none
  private

  public :: sw_host_t

  real(dp), parameter :: DAY = 86400, PI = 3.14159265358979323846_dp
  integer, parameter :: N_IN = 15, N_OUT = 3      !< NN features per column (README: the order)

  ! the global diagnostics of one state, in this order (computed on rank 0)
  integer, parameter :: D_MASS = 1, D_MEAN_H = 2, D_H_STD = 3, D_KE = 4, D_PE = 5, &
                        D_ENERGY = 6, D_MAX_SPEED = 7, D_MEAN_SPEED = 8, D_THETA_H_MEAN = 9, &
                        ND = 9
  character(len=*), parameter :: DIAG_NAMES(ND) = [character(len=16) :: 'mass', 'mean_h', &
    'h_std', 'ke', 'pe', 'energy', 'max_speed', 'mean_speed', 'theta_h_mean']

  ! a truth sample: these fields, nx*ny values each (x fastest), then the diagnostics d(ND);
  ! a coarse record: the step, then d(ND)
  integer, parameter :: F_U = 1, F_V = 2, F_H = 3, F_THETA_U = 4, F_THETA_V = 5, &
                        F_THETA_H = 6, N_FIELDS = 6

  ! per-step failure codes; the lowest over the ranks is the one reported
  integer, parameter :: C_NAN_U = 1, C_NAN_V = 2, C_NAN_H = 3, C_DEPTH = 4, C_SPEED_U = 5, &
                        C_SPEED_V = 6, C_OK = 99

  type :: sw_config_t
    ! &sw_model
    integer :: nx = 32, ny = 32
    real(dp) :: dx = 50e3_dp, dy = 50e3_dp          !< m
    real(dp) :: f0 = 1e-4_dp                        !< 1/s
    real(dp) :: g = 0.5_dp                          !< reduced gravity, m/s^2
    real(dp) :: depth = 500                         !< mean depth H, m
    real(dp) :: viscosity = 100                     !< m^2/s
    real(dp) :: drag_days = 30                      !< linear drag r = 1/drag_days; 0: none
    real(dp) :: wind_u0 = 4, wind_days = 30         !< wind F0 = wind_u0 / wind_days (m/s^2)
    real(dp) :: relax_days = 30                     !< thickness relaxation time scale
    real(dp) :: h_eq_amplitude = 10                 !< m
    ! &sw_run
    character(len=16) :: mode = 'coarse'            !< 'truth' | 'coarse'
    character(len=16) :: closure = 'nn'             !< coarse: 'nn' | 'none' | 'truth'
    real(dp) :: dt = 900                            !< s
    integer :: n_steps = 1000, spinup_steps = 0
    integer(i8) :: seed = 1
    character(len=1024) :: init_file = '', output_dir = '.'
    integer :: init_index = 1
    integer :: output_interval = 24, sample_interval = 48
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
    real(dp) :: wind_scale = 1
    logical :: relaxation = .true.
    type(batch_keys_t) :: batch                     !< n_runs, init_indices, seeds, run_dirs, ...
    ! &sw_failure
    real(dp) :: max_speed = 50                      !< m/s, on |u| and |v|
    real(dp) :: energy_max = 0, energy_warn = 0     !< m^3/s^2 (domain mean); 0: off
    integer :: energy_check_interval = 24
    real(dp) :: clim_ke = 0, clim_pe = 0, clim_h_std = 0, clim_speed_mean = 0  !< 0: not given
    ! the climate tests (coarse): windows of climate_window steps sampled every
    ! climate_sample_interval; in each, the distribution of h over the grid (Hellinger distance
    ! on the truth's bins) and the kinetic-energy spectrum along x (rms log10 ratio to the
    ! truth's), each a one-sided z-score against the same distance over truth windows
    ! (climate_stats' distance_z: the *_dist_mean and *_dist_sd are of the distance to the
    ! power 2/3), failing above climate_sigma. 0 windows, bins or wavenumbers: off.
    integer :: climate_window = 0, climate_sample_interval = 48
    real(dp) :: climate_sigma = 5
    integer :: n_pdf_bins = 0, n_ke_waves = 0
    real(dp) :: pdf_edges(MAX_PDF_BINS - 1) = 0, clim_pdf(MAX_PDF_BINS) = 0
    real(dp) :: pdf_dist_mean = 0, pdf_dist_sd = 0
    real(dp) :: clim_ke_spectrum(MAX_SPEC_WAVES) = 0, spec_dist_mean = 0, spec_dist_sd = 0
  end type sw_config_t

  !> The host: its configuration and this rank's state. Fields are (nx, 0:n+1): this rank's
  !> rows 1..n and one halo row on each side (every stencil here reaches one row).
  type, extends(host_t) :: sw_host_t
    private
    type(sw_config_t) :: cfg
    integer :: first = 1, n = 0                         !< this rank owns rows first..first+n-1
    integer :: ncol = 0                                 !< NN columns = nx * n
    real(dp), allocatable :: u(:, :), v(:, :), h(:, :)  !< the state
    real(dp), allocatable :: us(:, :), vs(:, :), hs(:, :)  !< the RK stage state
    real(dp), allocatable :: dd(:, :), uf(:, :), vf(:, :), q(:, :), bern(:, :)  !< work
    real(dp), allocatable :: du(:, :), dv(:, :), dh(:, :)  !< tendencies, (nx, n)
    real(dp), allocatable :: fu(:, :), fv(:, :), fh(:, :)  !< theta at the current stage
    real(dp), allocatable :: fh1(:, :)                  !< theta_h at the step's first stage
    real(dp), allocatable :: wind_u(:, :), wind_v(:, :), h_eq(:, :)  !< static patterns
    integer, allocatable :: ip(:), im(:)                !< periodic x neighbours
    integer, allocatable :: counts(:), displs(:)
    real(dp), allocatable :: ug(:, :), vg(:, :), hg(:, :), wg(:, :)  !< gathered on rank 0
    real(dp) :: d0(ND) = 0                              !< the diagnostics before step 1
    ! the energy check (coarse): its largest value and the first step above energy_warn
    real(dp) :: e_max = 0
    integer :: warn_step = -1
    ! the climate tests (rank 0): the window's h counts and KE spectrum, the z-scores so far
    real(dp), allocatable :: h_counts(:), ke_spec(:), cos_t(:, :), sin_t(:, :)
    integer :: i_win = 0, n_samples = 0
    real(dp), allocatable :: w_time(:), w_zpdf(:), w_zspec(:)
  contains
    procedure :: name => sw_name
    procedure :: groups => sw_groups
    procedure :: group_io => sw_group_io
    procedure :: settings => sw_settings
    procedure :: validate => sw_validate
    procedure :: setup => sw_setup
    procedure :: for_run => sw_for_run
    procedure :: state_bytes => sw_state_bytes
    procedure :: coupler_spec => sw_coupler_spec
    procedure :: network_columns => sw_network_columns
    procedure :: n_stages => sw_n_stages
    procedure :: start => sw_start
    procedure :: stage_begin => sw_stage_begin
    procedure :: stage_end => sw_stage_end
    procedure :: inject => sw_inject
    procedure :: check_local => sw_check_local
    procedure :: check_finish => sw_check_finish
    procedure :: record => sw_record
    procedure :: summarize => sw_summarize
    procedure :: write_output => sw_write_output
    procedure :: has_closure => sw_has_closure
    procedure :: closure_columns => sw_closure_columns
    procedure :: trains_online => sw_trains_online
    procedure :: online_pairs => sw_online_pairs
  end type sw_host_t

contains

  function sw_name(self) result(name)
    class(sw_host_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'sw'
  end function sw_name

  !> &sw_run first: an error in a later group is then reported in its output_dir.
  subroutine sw_groups(self, groups)
    class(sw_host_t), intent(in) :: self
    character(len=GROUP_LEN), allocatable, intent(out) :: groups(:)
    groups = [character(len=GROUP_LEN) :: 'sw_run', 'sw_model', 'sw_failure']
  end subroutine sw_groups

  !> A namelist names variables of its own scope: the keys are locals here, copied from the
  !> configuration and, after a read, back to it by name (a positional
  !> constructor would silently swap two reals of the same kind).
  subroutine sw_group_io(self, group, unit, reading, iostat, iomsg)
    class(sw_host_t), intent(inout) :: self
    character(len=*), intent(in) :: group    !! 'sw_run', 'sw_model' or 'sw_failure'
    integer, intent(in) :: unit
    logical, intent(in) :: reading           !! read the group, else write it
    integer, intent(out) :: iostat
    character(len=*), intent(inout) :: iomsg
    integer :: nx, ny, n_steps, spinup_steps, init_index, output_interval, sample_interval, &
               inject_nan_step, inject_nan_column, energy_check_interval, n_runs, &
               init_indices(MAX_RUNS), inject_nan_run, climate_window, &
               climate_sample_interval, n_pdf_bins, n_ke_waves
    real(dp) :: dx, dy, f0, g, depth, viscosity, drag_days, wind_u0, wind_days, relax_days, &
                h_eq_amplitude, dt, wind_scale, max_speed, energy_max, energy_warn, clim_ke, &
                clim_pe, clim_h_std, clim_speed_mean, climate_sigma, &
                pdf_edges(MAX_PDF_BINS - 1), clim_pdf(MAX_PDF_BINS), pdf_dist_mean, pdf_dist_sd, &
                clim_ke_spectrum(MAX_SPEC_WAVES), spec_dist_mean, spec_dist_sd
    character(len=16) :: mode, closure
    character(len=8) :: inject_value
    character(len=16) :: inject_target
    integer :: online_interval, checkpoint_interval
    character(len=1024) :: init_file, output_dir
    character(len=DIR_LEN) :: run_dirs(MAX_RUNS)
    integer(i8) :: seed, seeds(MAX_RUNS), max_batch_bytes
    logical :: relaxation
    namelist /sw_model/ nx, ny, dx, dy, f0, g, depth, viscosity, drag_days, wind_u0, &
      wind_days, relax_days, h_eq_amplitude
    namelist /sw_run/ mode, closure, dt, n_steps, spinup_steps, seed, init_file, init_index, &
      output_dir, output_interval, sample_interval, inject_nan_step, inject_nan_column, &
      inject_value, inject_target, online_interval, checkpoint_interval, &
      wind_scale, relaxation, n_runs, init_indices, seeds, run_dirs, inject_nan_run, &
      max_batch_bytes
    namelist /sw_failure/ max_speed, energy_max, energy_warn, energy_check_interval, clim_ke, &
      clim_pe, clim_h_std, clim_speed_mean, climate_window, climate_sample_interval, &
      climate_sigma, n_pdf_bins, pdf_edges, clim_pdf, pdf_dist_mean, pdf_dist_sd, n_ke_waves, &
      clim_ke_spectrum, spec_dist_mean, spec_dist_sd

    associate (cfg => self%cfg)
    nx = cfg%nx; ny = cfg%ny; dx = cfg%dx; dy = cfg%dy; f0 = cfg%f0; g = cfg%g
    depth = cfg%depth; viscosity = cfg%viscosity; drag_days = cfg%drag_days
    wind_u0 = cfg%wind_u0; wind_days = cfg%wind_days; relax_days = cfg%relax_days
    h_eq_amplitude = cfg%h_eq_amplitude
    mode = cfg%mode; closure = cfg%closure; dt = cfg%dt; n_steps = cfg%n_steps
    spinup_steps = cfg%spinup_steps; seed = cfg%seed; init_file = cfg%init_file
    init_index = cfg%init_index; output_dir = cfg%output_dir
    output_interval = cfg%output_interval; sample_interval = cfg%sample_interval
    inject_nan_step = cfg%inject_nan_step; inject_nan_column = cfg%inject_nan_column
    inject_value = cfg%inject_value; inject_target = cfg%inject_target
    online_interval = cfg%online_interval; checkpoint_interval = cfg%checkpoint_interval
    wind_scale = cfg%wind_scale; relaxation = cfg%relaxation
    n_runs = cfg%batch%n_runs; init_indices = cfg%batch%init_indices; seeds = cfg%batch%seeds
    run_dirs = cfg%batch%run_dirs; inject_nan_run = cfg%batch%inject_nan_run
    max_batch_bytes = cfg%batch%max_batch_bytes
    max_speed = cfg%max_speed; energy_max = cfg%energy_max; energy_warn = cfg%energy_warn
    energy_check_interval = cfg%energy_check_interval; clim_ke = cfg%clim_ke
    clim_pe = cfg%clim_pe; clim_h_std = cfg%clim_h_std; clim_speed_mean = cfg%clim_speed_mean
    climate_window = cfg%climate_window; climate_sample_interval = cfg%climate_sample_interval
    climate_sigma = cfg%climate_sigma; n_pdf_bins = cfg%n_pdf_bins; pdf_edges = cfg%pdf_edges
    clim_pdf = cfg%clim_pdf; pdf_dist_mean = cfg%pdf_dist_mean; pdf_dist_sd = cfg%pdf_dist_sd
    n_ke_waves = cfg%n_ke_waves; clim_ke_spectrum = cfg%clim_ke_spectrum
    spec_dist_mean = cfg%spec_dist_mean; spec_dist_sd = cfg%spec_dist_sd

    iostat = 0
    select case (group)
    case ('sw_model')
      if (reading) read (unit, nml=sw_model, iostat=iostat, iomsg=iomsg)
      if (.not. reading) write (unit, nml=sw_model)
    case ('sw_run')
      if (reading) read (unit, nml=sw_run, iostat=iostat, iomsg=iomsg)
      if (.not. reading) write (unit, nml=sw_run)
    case ('sw_failure')
      if (reading) read (unit, nml=sw_failure, iostat=iostat, iomsg=iomsg)
      if (.not. reading) write (unit, nml=sw_failure)
    end select
    if (.not. reading) return
    if (iostat /= 0) then
      ! an output_dir read before the error: the error's result.json lands where asked
      if (group == 'sw_run' .and. len_trim(output_dir) > 0) cfg%output_dir = output_dir
      return
    end if

    cfg%nx = nx; cfg%ny = ny; cfg%dx = dx; cfg%dy = dy; cfg%f0 = f0; cfg%g = g
    cfg%depth = depth; cfg%viscosity = viscosity; cfg%drag_days = drag_days
    cfg%wind_u0 = wind_u0; cfg%wind_days = wind_days; cfg%relax_days = relax_days
    cfg%h_eq_amplitude = h_eq_amplitude
    cfg%mode = mode; cfg%closure = closure; cfg%dt = dt; cfg%n_steps = n_steps
    cfg%spinup_steps = spinup_steps; cfg%seed = seed; cfg%init_file = init_file
    cfg%init_index = init_index; cfg%output_dir = output_dir
    cfg%output_interval = output_interval; cfg%sample_interval = sample_interval
    cfg%inject_nan_step = inject_nan_step; cfg%inject_nan_column = inject_nan_column
    cfg%inject_value = inject_value; cfg%inject_target = inject_target
    cfg%online_interval = online_interval; cfg%checkpoint_interval = checkpoint_interval
    cfg%wind_scale = wind_scale; cfg%relaxation = relaxation
    cfg%batch = batch_keys_t(n_runs=n_runs, init_indices=init_indices, seeds=seeds, &
                             run_dirs=run_dirs, inject_nan_run=inject_nan_run, &
                             max_batch_bytes=max_batch_bytes)
    cfg%max_speed = max_speed; cfg%energy_max = energy_max; cfg%energy_warn = energy_warn
    cfg%energy_check_interval = energy_check_interval; cfg%clim_ke = clim_ke
    cfg%clim_pe = clim_pe; cfg%clim_h_std = clim_h_std; cfg%clim_speed_mean = clim_speed_mean
    cfg%climate_window = climate_window; cfg%climate_sample_interval = climate_sample_interval
    cfg%climate_sigma = climate_sigma; cfg%n_pdf_bins = n_pdf_bins; cfg%pdf_edges = pdf_edges
    cfg%clim_pdf = clim_pdf; cfg%pdf_dist_mean = pdf_dist_mean; cfg%pdf_dist_sd = pdf_dist_sd
    cfg%n_ke_waves = n_ke_waves; cfg%clim_ke_spectrum = clim_ke_spectrum
    cfg%spec_dist_mean = spec_dist_mean; cfg%spec_dist_sd = spec_dist_sd
    end associate
  end subroutine sw_group_io

  function sw_settings(self) result(s)
    class(sw_host_t), intent(in) :: self
    type(run_settings_t) :: s
    s = run_settings_t(mode=self%cfg%mode, closure=self%cfg%closure, run_group='sw_run', &
                       columns_key='nx*ny', dt=self%cfg%dt, n_steps=self%cfg%n_steps, &
                       spinup_steps=self%cfg%spinup_steps, &
                       output_interval=self%cfg%output_interval, &
                       sample_interval=self%cfg%sample_interval, &
                       init_index=self%cfg%init_index, seed=self%cfg%seed, &
                       output_dir=self%cfg%output_dir, n_columns=self%cfg%nx * self%cfg%ny, &
                       inject_nan_step=self%cfg%inject_nan_step, &
                       inject_nan_column=self%cfg%inject_nan_column, &
                       inject_value=self%cfg%inject_value, &
                       inject_target=self%cfg%inject_target, &
                       online_interval=self%cfg%online_interval, &
                       checkpoint_interval=self%cfg%checkpoint_interval, record_size=1 + ND, &
                       batch=self%cfg%batch)
    if (self%cfg%mode == 'truth') s%record_size = N_FIELDS * self%cfg%nx * self%cfg%ny + ND
  end function sw_settings

  subroutine sw_validate(self, path, stat, errmsg)
    class(sw_host_t), intent(in) :: self
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    call validate(self%cfg, path, stat, errmsg)
  end subroutine sw_validate

  subroutine sw_setup(self, stat, errmsg)
    class(sw_host_t), intent(inout) :: self
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    call setup(self%cfg, self, stat, errmsg)
  end subroutine sw_setup

  function sw_coupler_spec(self) result(spec)
    class(sw_host_t), intent(in) :: self
    type(coupler_spec_t) :: spec
    spec%n_in = N_IN
    spec%n_out = N_OUT
    spec%passes = 'this host passes u, v, h at a cell and its 4 neighbours and expects '// &
                  'theta_u, theta_v, theta_h'
    spec%output_name = 'theta'
  end function sw_coupler_spec

  subroutine sw_for_run(self, init_index, seed)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: init_index
    integer(i8), intent(in) :: seed
    self%cfg%init_index = init_index
    self%cfg%seed = seed
  end subroutine sw_for_run

  !> What setup allocates on the rank with the most rows.
  function sw_state_bytes(self) result(bytes)
    class(sw_host_t), intent(in) :: self
    integer(i8) :: bytes
    integer(i8) :: n, nx
    nx = self%cfg%nx
    n = (self%cfg%ny + self%nranks - 1) / self%nranks
    bytes = 8 * (11 * nx * (n + 2) + 10 * nx * n + nx) + &
            storage_size(1.0_wp) / 8 * (N_IN + N_OUT) * nx * n
    if (self%rank == 0) bytes = bytes + 8 * 4 * nx * self%cfg%ny
    if (self%rank == 0 .and. self%cfg%climate_window > 0) bytes = bytes + &
      8 * (MAX_PDF_BINS + (2 * nx + 1) * self%cfg%n_ke_waves + &
           3 * (self%cfg%n_steps / self%cfg%climate_window))
  end function sw_state_bytes

  subroutine sw_network_columns(self, n_columns, column_offset)
    class(sw_host_t), intent(in) :: self
    integer, intent(out) :: n_columns, column_offset
    n_columns = self%ncol
    column_offset = (self%first - 1) * self%cfg%nx
  end subroutine sw_network_columns

  integer function sw_n_stages(self)
    class(sw_host_t), intent(in) :: self
    sw_n_stages = 3
  end function sw_n_stages

  !> Coarse: the truth-forced spin-up (not counted in the steps; from a seeded state). Both
  !> modes: the diagnostics of the state before step 1, for the drifts.
  subroutine sw_start(self, run)
    class(sw_host_t), intent(inout) :: self
    type(host_run_t), intent(inout) :: run
    integer :: step
    if (self%cfg%mode == 'coarse') then
      do step = 1, self%cfg%spinup_steps
        call sw_step(self%cfg, self, 'truth')
      end do
      self%fh1 = ieee_nan()
      self%e_max = ieee_nan()
      self%warn_step = -1
      self%i_win = 0
      self%n_samples = 0
      if (allocated(self%h_counts)) self%h_counts = 0
      if (allocated(self%ke_spec)) self%ke_spec = 0
    end if
    call global_diag(self%cfg, self, self%d0)
  end subroutine sw_start

  subroutine sw_stage_begin(self, step, stage, nn_in)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: step, stage
    real(wp), intent(inout), contiguous :: nn_in(:, :)
    call stage_begin(self%cfg, self, stage, mode_closure(self%cfg), nn_in)
  end subroutine sw_stage_begin

  subroutine sw_stage_end(self, step, stage, nn_out)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: step, stage
    real(wp), intent(in), contiguous :: nn_out(:, :)
    call stage_end(self%cfg, self, stage, mode_closure(self%cfg), nn_out)
  end subroutine sw_stage_end

  !> Fallback and ramp take the truth forcing theta of the column's cell.
  logical function sw_has_closure(self)
    class(sw_host_t), intent(in) :: self
    sw_has_closure = .true.
  end function sw_has_closure

  !> The truth forcing of the stage's state, in the network's output layout (after
  !> stage_begin, which exchanged the halos; forcing_end then takes the network's theta).
  subroutine sw_closure_columns(self, step, stage, closure)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: step, stage
    real(wp), intent(inout), contiguous :: closure(:, :)
    integer :: i, j, c
    if (stage == 1) then
      call truth_forcing(self%cfg, self, self%u, self%v, self%h)
    else
      call truth_forcing(self%cfg, self, self%us, self%vs, self%hs)
    end if
    do j = 1, self%n
      do i = 1, self%cfg%nx
        c = i + (j - 1) * self%cfg%nx
        closure(1, c) = real(self%fu(i, j), wp)
        closure(2, c) = real(self%fv(i, j), wp)
        closure(3, c) = real(self%fh(i, j), wp)
      end do
    end do
  end subroutine sw_closure_columns

  !> A truth run knows the truth forcing of every cell: it can train online.
  logical function sw_trains_online(self)
    class(sw_host_t), intent(in) :: self
    sw_trains_online = self%cfg%mode == 'truth'
  end function sw_trains_online

  !> The network's inputs of the current state (u, v, h at each cell and its 4 neighbours) and
  !> the truth forcing theta of the cell (what the network learns).
  subroutine sw_online_pairs(self, nn_in, targets)
    class(sw_host_t), intent(inout) :: self
    real(wp), intent(inout), contiguous :: nn_in(:, :), targets(:, :)
    character(len=16), parameter :: NN = 'nn'
    call forcing_begin(self%cfg, self, NN, self%u, self%v, self%h, nn_in)
    call sw_closure_columns(self, 0, 1, targets)
  end subroutine sw_online_pairs

  !> The closure of the mode: truth runs with the truth forcing.
  pure function mode_closure(cfg) result(closure)
    type(sw_config_t), intent(in) :: cfg
    character(len=16) :: closure
    closure = 'truth'
    if (cfg%mode == 'coarse') closure = cfg%closure
  end function mode_closure

  subroutine sw_inject(self, column, value)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: column
    real(dp), intent(in) :: value
    integer :: i, j
    j = (column - 1) / self%cfg%nx + 1 - self%first + 1
    i = modulo(column - 1, self%cfg%nx) + 1
    if (j >= 1 .and. j <= self%n) self%h(i, j) = value
  end subroutine sw_inject

  !> The state's checks on this rank's rows: non-finite u, v, h; depth + h <= 0; |u| or |v| >
  !> max_speed. severity C_OK - code of the lowest code that fired (0: none); values =
  !> (-min(depth + h), max |u|, max |v|), maxima over the ranks once reduced.
  subroutine sw_check_local(self, step, severity, values)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: step
    integer, intent(out) :: severity
    real(dp), intent(out) :: values(N_CHECK_VALUES)
    integer :: code, i, j
    real(dp) :: umax, vmax, dmin
    code = C_OK
    umax = 0
    vmax = 0
    dmin = huge(1.0_dp)
    do j = 1, self%n
      do i = 1, self%cfg%nx
        if (.not. (abs(self%u(i, j)) <= huge(1.0_dp))) code = min(code, C_NAN_U)
        if (.not. (abs(self%v(i, j)) <= huge(1.0_dp))) code = min(code, C_NAN_V)
        if (.not. (abs(self%h(i, j)) <= huge(1.0_dp))) code = min(code, C_NAN_H)
        umax = max(umax, abs(self%u(i, j)))
        vmax = max(vmax, abs(self%v(i, j)))
        dmin = min(dmin, self%cfg%depth + self%h(i, j))
      end do
    end do
    if (code == C_OK) then
      if (dmin <= 0) then
        code = C_DEPTH
      else if (umax > self%cfg%max_speed) then
        code = C_SPEED_U
      else if (vmax > self%cfg%max_speed) then
        code = C_SPEED_V
      end if
    end if
    severity = C_OK - code
    values(1) = -dmin
    values(2) = umax
    values(3) = vmax
    values(4) = 0
  end subroutine sw_check_local

  !> The failure of the reduced state check; in coarse mode also the energy every
  !> energy_check_interval steps (its maximum and the first step above energy_warn are kept).
  subroutine sw_check_finish(self, step, severity, values, failure)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: step
    integer, intent(in) :: severity
    real(dp), intent(in) :: values(N_CHECK_VALUES)
    type(failure_t), intent(out) :: failure
    real(dp) :: d(ND)
    integer :: code
    associate (cfg => self%cfg)
    code = C_OK - severity
    select case (code)
    case (C_NAN_U, C_NAN_V, C_NAN_H)
      failure%reason = 'nonfinite'
      failure%variable = merge('u', merge('v', 'h', code == C_NAN_V), code == C_NAN_U)
      failure%message = trim(failure%variable)//' is not finite'
    case (C_DEPTH)
      failure%reason = 'negative_depth'
      failure%variable = 'h'
      failure%message = 'depth + h = '//ftoa(-values(1))//' <= 0'
    case (C_SPEED_U, C_SPEED_V)
      failure%reason = 'bounds'
      failure%variable = merge('u', 'v', code == C_SPEED_U)
      failure%message = '|'//trim(failure%variable)//'| = '// &
                        ftoa(values(merge(2, 3, code == C_SPEED_U)))//' > max_speed = '// &
                        ftoa(cfg%max_speed)
    end select
    failure%failed = code /= C_OK
    if (failure%failed) then
      if (cfg%mode == 'truth') failure%message = 'the truth run: '//trim(failure%message)// &
                                                 ' (is dt too large?)'
      return
    end if
    if (cfg%mode == 'truth') return
    if (cfg%climate_window > 0 .and. mod(step, cfg%climate_sample_interval) == 0) then
      call climate_test(self, step, failure)
      if (failure%failed) return
    end if
    if (.not. (cfg%energy_max > 0 .or. cfg%energy_warn > 0)) return
    if (mod(step, cfg%energy_check_interval) /= 0) return
    call global_diag(cfg, self, d)
    if (self%rank == 0) then
      if (.not. (self%e_max >= d(D_ENERGY))) self%e_max = d(D_ENERGY)
      if (cfg%energy_warn > 0 .and. self%warn_step < 0 .and. d(D_ENERGY) > cfg%energy_warn) &
        self%warn_step = step
      if (cfg%energy_max > 0 .and. .not. (d(D_ENERGY) <= cfg%energy_max)) &
        failure = failure_t(.true., 'energy', 'energy', 'energy = '//ftoa(d(D_ENERGY))// &
                            ' > energy_max = '//ftoa(cfg%energy_max))
    end if
    call failure_bcast(failure, self%comm)
    end associate
  end subroutine sw_check_finish

  !> Samples the gathered state into the climate window; at the window's end, the distance of
  !> its h distribution and its KE spectrum from the truth's as z-scores (collective).
  subroutine climate_test(self, step, failure)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: step
    type(failure_t), intent(inout) :: failure
    real(dp) :: d(ND), zp, zs
    integer :: nb, nw
    associate (cfg => self%cfg)
    call global_diag(cfg, self, d)           ! gathers u, v and h on rank 0
    nb = cfg%n_pdf_bins
    nw = cfg%n_ke_waves
    if (self%rank == 0) then
      if (nb > 0) call pdf_accumulate(self%hg, cfg%pdf_edges(1:nb - 1), self%h_counts(1:nb))
      if (nw > 0) then
        call power_spectrum_accumulate(self%ug, self%cos_t, self%sin_t, self%ke_spec)
        call power_spectrum_accumulate(self%vg, self%cos_t, self%sin_t, self%ke_spec)
      end if
      self%n_samples = self%n_samples + 1
      if (mod(step, cfg%climate_window) == 0) then
        zp = ieee_nan()
        zs = ieee_nan()
        if (nb > 0) zp = distance_z(hellinger_from_counts(self%h_counts(1:nb), &
                                                          cfg%clim_pdf(1:nb)), &
                                    cfg%pdf_dist_mean, cfg%pdf_dist_sd)
        ! per sample and row: the truth's spectrum is normalized the same way
        if (nw > 0) zs = distance_z(spectrum_distance(self%ke_spec / (2 * self%n_samples * &
                                                                      cfg%ny), &
                                                      cfg%clim_ke_spectrum(1:nw)), &
                                    cfg%spec_dist_mean, cfg%spec_dist_sd)
        self%i_win = self%i_win + 1
        self%w_time(self%i_win) = step * cfg%dt / DAY
        self%w_zpdf(self%i_win) = zp
        self%w_zspec(self%i_win) = zs
        self%h_counts = 0
        self%ke_spec = 0
        self%n_samples = 0
        if (zp > cfg%climate_sigma) then
          failure = failure_t(.true., 'distribution', 'h_pdf', "the window's distribution "// &
                              'of h is '//ftoa(zp)//" sd further from the truth's "// &
                              '(Hellinger) than truth windows are (threshold '// &
                              ftoa(cfg%climate_sigma)//')')
        else if (zs > cfg%climate_sigma) then
          failure = failure_t(.true., 'spectrum', 'ke_spectrum', "the window's kinetic-"// &
                              'energy spectrum is '//ftoa(zs)//" sd further from the truth's "// &
                              'than truth windows are (threshold '//ftoa(cfg%climate_sigma)//')')
        end if
      end if
    end if
    call failure_bcast(failure, self%comm)
    end associate
  end subroutine climate_test

  !> Coarse: the step and the global diagnostics. Truth: the state and theta of the state,
  !> gathered on rank 0, and the diagnostics.
  subroutine sw_record(self, step, values)
    class(sw_host_t), intent(inout) :: self
    integer, intent(in) :: step
    real(dp), intent(inout) :: values(:)
    integer :: nn
    if (self%cfg%mode == 'coarse') then
      values(1) = step
      call global_diag(self%cfg, self, values(2:))
      return
    end if
    nn = self%cfg%nx * self%cfg%ny
    call ring_exchange(self%u, self%n, 1, 1, self%comm)
    call ring_exchange(self%v, self%n, 1, 1, self%comm)
    call ring_exchange(self%h, self%n, 1, 1, self%comm)
    call truth_forcing(self%cfg, self, self%u, self%v, self%h)
    self%fh1 = self%fh
    call global_diag(self%cfg, self, values(N_FIELDS * nn + 1:))
    call put(F_U, self%ug)
    call put(F_V, self%vg)
    call put(F_H, self%hg)
    call put(F_THETA_H, self%wg)
    call gather_columns_dp(self%fu, self%wg, self%counts, self%displs, self%comm)
    call put(F_THETA_U, self%wg)
    call gather_columns_dp(self%fv, self%wg, self%counts, self%displs, self%comm)
    call put(F_THETA_V, self%wg)
  contains
    !> Field `field` of the sample from rank 0's gathered a(nx, ny).
    subroutine put(field, a)
      integer, intent(in) :: field
      real(dp), intent(in) :: a(:, :)
      integer :: j, off
      if (self%rank /= 0) return
      off = (field - 1) * nn
      do j = 1, self%cfg%ny
        values(off + (j - 1) * self%cfg%nx + 1:off + j * self%cfg%nx) = a(:, j)
      end do
    end subroutine put
  end subroutine sw_record

  subroutine sw_summarize(self, run)
    class(sw_host_t), intent(inout) :: self
    type(host_run_t), intent(inout) :: run
    real(dp) :: d(ND)
    integer :: at
    associate (cfg => self%cfg, d0 => self%d0, r => run%result)
    ! the final state (rank 0's ug, vg, hg are written as the final fields)
    call global_diag(cfg, self, d)
    call r%clear_extras()
    if (cfg%mode == 'truth') then
      at = N_FIELDS * cfg%nx * cfg%ny
      call r%add_extra('max_energy', max_finite(series(D_ENERGY)))
      call r%add_extra('min_energy', -max_finite(-series(D_ENERGY)))
      call r%add_extra('mean_energy', mean_finite(series(D_ENERGY)))
      call r%add_extra('mean_ke', mean_finite(series(D_KE)))
      call r%add_extra('mean_pe', mean_finite(series(D_PE)))
      call r%add_extra('mean_h_std', mean_finite(series(D_H_STD)))
      call r%add_extra('mean_speed', mean_finite(series(D_MEAN_SPEED)))
      call r%add_extra('max_speed', max_finite(series(D_MAX_SPEED)))
    else
      at = 1
      call r%add_extra('energy_warn_step', real(self%warn_step, dp))
      call r%add_extra('max_energy', max_finite([self%e_max, series(D_ENERGY)]))
      call r%add_extra('mean_energy', mean_finite(series(D_ENERGY)))
      call r%add_extra('final_energy', d(D_ENERGY))
      call r%add_extra('mean_ke', mean_finite(series(D_KE)))
      call r%add_extra('mean_pe', mean_finite(series(D_PE)))
      call r%add_extra('mean_h_std', mean_finite(series(D_H_STD)))
      call r%add_extra('mean_speed', mean_finite(series(D_MEAN_SPEED)))
    end if
    call r%add_extra('mean_h_drift', d(D_MEAN_H) - d0(D_MEAN_H))
    call r%add_extra('mass_rel_drift', (d(D_MASS) - d0(D_MASS)) / d0(D_MASS))
    if (cfg%mode == 'coarse') then
      call r%add_extra('rmse_ke', rms_vs(series(D_KE), cfg%clim_ke))
      call r%add_extra('rmse_pe', rms_vs(series(D_PE), cfg%clim_pe))
      call r%add_extra('rmse_h_std', rms_vs(series(D_H_STD), cfg%clim_h_std))
      call r%add_extra('rmse_speed', rms_vs(series(D_MEAN_SPEED), cfg%clim_speed_mean))
      if (cfg%climate_window > 0 .and. cfg%n_pdf_bins > 0) &
        call r%add_extra('final_window_z_pdf', last(self%w_zpdf(1:self%i_win)))
      if (cfg%climate_window > 0 .and. cfg%n_ke_waves > 0) &
        call r%add_extra('final_window_z_spectrum', last(self%w_zspec(1:self%i_win)))
    end if
    end associate
  contains
    !> Diagnostic k over the records.
    function series(k) result(a)
      integer, intent(in) :: k
      real(dp), allocatable :: a(:)
      a = run%records%series(at + k)
    end function series
  end subroutine sw_summarize

  subroutine sw_write_output(self, run, out)
    class(sw_host_t), intent(inout) :: self
    type(host_run_t), intent(in) :: run
    type(h5_out_t), intent(inout) :: out
    character(len=8), parameter :: DIMS3(3) = [character(len=8) :: 'x', 'y', 'time']
    integer :: k, n, nn
    associate (cfg => self%cfg, values => run%records%values)
    n = run%records%n
    nn = cfg%nx * cfg%ny
    call out%dim('time', run%records%time(1:n))
    if (cfg%mode == 'truth') then
      call write_grid(cfg, out)
      call out%put3('u', field(F_U), DIMS3)
      call out%put3('v', field(F_V), DIMS3)
      call out%put3('h', field(F_H), DIMS3)
      call out%put3('theta_u', field(F_THETA_U), DIMS3)
      call out%put3('theta_v', field(F_THETA_V), DIMS3)
      call out%put3('theta_h', field(F_THETA_H), DIMS3)
      do k = 1, ND
        call out%put1(trim(DIAG_NAMES(k)), values(N_FIELDS * nn + k, 1:n), 'time')
      end do
      call write_params(cfg, out)
      call out%attr_real('sample_interval', real(cfg%sample_interval, dp))
      call out%attr_real('spinup_steps', real(cfg%spinup_steps, dp))
      call out%attr_real('seed', real(cfg%seed, dp))
      return
    end if
    call out%put1('step', values(1, 1:n), 'time')
    do k = 1, ND
      call out%put1(trim(DIAG_NAMES(k)), values(1 + k, 1:n), 'time')
    end do
    call out%put1('bias_ke', bias(values(1 + D_KE, 1:n), cfg%clim_ke), 'time')
    call out%put1('bias_pe', bias(values(1 + D_PE, 1:n), cfg%clim_pe), 'time')
    call out%put1('bias_h_std', bias(values(1 + D_H_STD, 1:n), cfg%clim_h_std), 'time')
    call out%put1('bias_speed', bias(values(1 + D_MEAN_SPEED, 1:n), cfg%clim_speed_mean), 'time')
    if (cfg%climate_window > 0) then
      call out%dim('window_end', self%w_time(1:self%i_win))
      if (cfg%n_pdf_bins > 0) call out%put1('climate_z_pdf', self%w_zpdf(1:self%i_win), 'window_end')
      if (cfg%n_ke_waves > 0) &
        call out%put1('climate_z_spectrum', self%w_zspec(1:self%i_win), 'window_end')
    end if
    call write_grid(cfg, out)
    call out%put2('u', self%ug, [character(len=8) :: 'x', 'y'])
    call out%put2('v', self%vg, [character(len=8) :: 'x', 'y'])
    call out%put2('h', self%hg, [character(len=8) :: 'x', 'y'])
    call write_params(cfg, out)
    call out%attr_str('closure', trim(cfg%closure))
    call out%attr_str('status', trim(run%result%status))
    call out%attr_real('failure_step', real(run%result%failure_step, dp))
    call out%attr_real('energy_warn_step', real(self%warn_step, dp))
    call out%attr_real('energy_max', cfg%energy_max)
    call out%attr_real('energy_warn', cfg%energy_warn)
    call out%attr_real('clim_ke', cfg%clim_ke)
    call out%attr_real('clim_pe', cfg%clim_pe)
    call out%attr_real('clim_h_std', cfg%clim_h_std)
    call out%attr_real('clim_speed_mean', cfg%clim_speed_mean)
    end associate
  contains
    !> A field of every sample, (nx, ny, samples).
    function field(f) result(a)
      integer, intent(in) :: f
      real(dp), allocatable :: a(:, :, :)
      a = reshape(run%records%values((f - 1) * self%cfg%nx * self%cfg%ny + 1: &
                                     f * self%cfg%nx * self%cfg%ny, 1:run%records%n), &
                  [self%cfg%nx, self%cfg%ny, run%records%n])
    end function field
  end subroutine sw_write_output

  ! ---------------------------------------------------------------------------------------
  ! configuration

  !> The host's own checks (host_driver checks the keys every host has).
  subroutine validate(cfg, path, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    character(len=*), intent(in) :: path
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    real(dp) :: courant
    stat = 1
    courant = 0
    if (cfg%dx > 0 .and. cfg%dy > 0 .and. cfg%g > 0 .and. cfg%depth > 0) &
      courant = 2 * cfg%dt * sqrt(cfg%g * cfg%depth) * sqrt(1 / cfg%dx**2 + 1 / cfg%dy**2)
    if (cfg%nx < 3) then
      errmsg = key_error(path, 'sw_model', 'nx', 'must be >= 3, got '//itoa(cfg%nx))
    else if (cfg%ny < 3) then
      errmsg = key_error(path, 'sw_model', 'ny', 'must be >= 3, got '//itoa(cfg%ny))
    else if (.not. (cfg%dx > 0 .and. cfg%dy > 0 .and. is_finite(cfg%dx) .and. is_finite(cfg%dy))) then
      errmsg = key_error(path, 'sw_model', 'dx, dy', 'must be > 0 and finite')
    else if (.not. (cfg%g > 0 .and. is_finite(cfg%g))) then
      errmsg = key_error(path, 'sw_model', 'g', 'must be > 0 and finite')
    else if (.not. (cfg%depth > 0 .and. is_finite(cfg%depth))) then
      errmsg = key_error(path, 'sw_model', 'depth', 'must be > 0 and finite')
    else if (.not. is_finite(cfg%f0)) then
      errmsg = key_error(path, 'sw_model', 'f0', 'must be finite')
    else if (.not. (cfg%viscosity >= 0 .and. is_finite(cfg%viscosity))) then
      errmsg = key_error(path, 'sw_model', 'viscosity', 'must be >= 0 and finite')
    else if (.not. (cfg%drag_days >= 0 .and. is_finite(cfg%drag_days))) then
      errmsg = key_error(path, 'sw_model', 'drag_days', 'must be >= 0 (0: no drag)')
    else if (.not. (cfg%wind_days > 0 .and. is_finite(cfg%wind_days) .and. is_finite(cfg%wind_u0))) then
      errmsg = key_error(path, 'sw_model', 'wind_days, wind_u0', 'wind_days must be > 0, wind_u0 finite')
    else if (.not. (cfg%relax_days > 0 .and. is_finite(cfg%relax_days))) then
      errmsg = key_error(path, 'sw_model', 'relax_days', 'must be > 0 (switch relaxation off in &sw_run)')
    else if (.not. is_finite(cfg%h_eq_amplitude)) then
      errmsg = key_error(path, 'sw_model', 'h_eq_amplitude', 'must be finite')
    else if (all(cfg%closure /= [character(len=16) :: 'nn', 'none', 'truth'])) then
      errmsg = key_error(path, 'sw_run', 'closure', "must be 'nn', 'none' or 'truth', got '"// &
                   trim(cfg%closure)//"'")
    else if (.not. (cfg%dt > 0 .and. courant <= sqrt(3.0_dp))) then
      ! gravity waves on the C-grid: SSP-RK3 is stable on the imaginary axis up to sqrt(3)
      errmsg = key_error(path, 'sw_run', 'dt', 'must be > 0 with 2 dt sqrt(g depth) sqrt(1/dx^2 + 1/dy^2) '// &
                   '<= sqrt(3) (gravity-wave limit), got '//ftoa(courant))
    else if (.not. is_finite(cfg%wind_scale)) then
      errmsg = key_error(path, 'sw_run', 'wind_scale', 'must be finite')
    else if (.not. (cfg%max_speed > 0)) then
      errmsg = key_error(path, 'sw_failure', 'max_speed', 'must be > 0')
    else if (.not. (cfg%energy_max >= 0 .and. cfg%energy_warn >= 0)) then
      errmsg = key_error(path, 'sw_failure', 'energy_max, energy_warn', 'must be >= 0 (0: off)')
    else if (cfg%energy_check_interval < 1) then
      errmsg = key_error(path, 'sw_failure', 'energy_check_interval', 'must be >= 1')
    else if (.not. (cfg%clim_ke >= 0 .and. cfg%clim_pe >= 0 .and. cfg%clim_h_std >= 0 .and. &
                    cfg%clim_speed_mean >= 0)) then
      errmsg = key_error(path, 'sw_failure', 'clim_ke, clim_pe, clim_h_std, clim_speed_mean', &
                   'must be >= 0 (0: not given)')
    else if (cfg%climate_window < 0 .or. (cfg%climate_window > 0 .and. &
             (cfg%climate_sample_interval < 1 .or. &
              mod(cfg%climate_window, max(cfg%climate_sample_interval, 1)) /= 0))) then
      errmsg = key_error(path, 'sw_failure', 'climate_window', 'must be 0 (off) or a positive '// &
                   'multiple of climate_sample_interval')
    else if (cfg%climate_window > 0 .and. .not. (cfg%climate_sigma > 0)) then
      errmsg = key_error(path, 'sw_failure', 'climate_sigma', 'must be > 0')
    else if (cfg%climate_window > 0 .and. .not. (cfg%n_pdf_bins == 0 .or. &
             (cfg%n_pdf_bins >= 2 .and. cfg%n_pdf_bins <= MAX_PDF_BINS))) then
      errmsg = key_error(path, 'sw_failure', 'n_pdf_bins', 'must be 0 (off) or in 2 .. '// &
                   itoa(MAX_PDF_BINS)//', got '//itoa(cfg%n_pdf_bins))
    else if (cfg%climate_window > 0 .and. cfg%n_pdf_bins > 0 .and. &
             .not. pdf_reference_ok(cfg%pdf_edges(1:cfg%n_pdf_bins - 1), cfg%clim_pdf(1:cfg%n_pdf_bins))) then
      errmsg = key_error(path, 'sw_failure', 'pdf_edges, clim_pdf', 'need n_pdf_bins - 1 '// &
                   'ascending finite edges and n_pdf_bins probabilities >= 0 summing to 1')
    else if (cfg%climate_window > 0 .and. cfg%n_pdf_bins > 0 .and. &
             .not. (cfg%pdf_dist_sd > 0 .and. cfg%pdf_dist_mean >= 0)) then
      errmsg = key_error(path, 'sw_failure', 'pdf_dist_mean, pdf_dist_sd', 'must be >= 0 and '// &
                   '> 0 (from a calibration on truth runs)')
    else if (cfg%climate_window > 0 .and. .not. (cfg%n_ke_waves >= 0 .and. &
             cfg%n_ke_waves <= min(cfg%nx / 2, MAX_SPEC_WAVES))) then
      errmsg = key_error(path, 'sw_failure', 'n_ke_waves', 'must be in 0 (off) .. nx / 2 '// &
                   '(at most '//itoa(MAX_SPEC_WAVES)//'), got '//itoa(cfg%n_ke_waves))
    else if (cfg%climate_window > 0 .and. cfg%n_ke_waves > 0 .and. .not. &
             (all(cfg%clim_ke_spectrum(1:cfg%n_ke_waves) > 0) .and. &
              cfg%spec_dist_sd > 0 .and. cfg%spec_dist_mean >= 0)) then
      errmsg = key_error(path, 'sw_failure', 'clim_ke_spectrum, spec_dist_mean, spec_dist_sd', &
                   'need n_ke_waves powers > 0, a mean >= 0 and a spread > 0 (from a '// &
                   'calibration on truth runs)')
    else
      stat = 0
      errmsg = ''
    end if
  end subroutine validate
  ! ---------------------------------------------------------------------------------------
  ! setup: decomposition, every array of the run (nothing is allocated after this), the static
  ! forcing patterns and the initial state

  subroutine setup(cfg, s, stat, errmsg)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    integer, intent(out) :: stat
    character(len=*), intent(out) :: errmsg
    integer :: i, j, jg, nx, n, mg, ng
    integer(i8) :: c
    real(dp) :: lx, ly, xc, yc, f_wind
    real(dp), allocatable :: init(:)

    ! decided from global numbers, so that every rank takes the same path (a rank that left
    ! here alone would hang the others in the collective gather_layout below)
    if (s%nranks > cfg%ny) then
      stat = 1
      errmsg = 'ny = '//itoa(cfg%ny)//' rows over '//itoa(s%nranks)//' ranks leaves a rank '// &
               'no rows: use at most ny ranks'
      return
    end if
    call decompose_columns(cfg%ny, s%comm, s%first, s%n, stat, errmsg)
    if (stat /= 0) return
    nx = cfg%nx
    n = s%n
    allocate (s%u(nx, 0:n + 1), s%v(nx, 0:n + 1), s%h(nx, 0:n + 1), s%us(nx, 0:n + 1), &
              s%vs(nx, 0:n + 1), s%hs(nx, 0:n + 1), s%dd(nx, 0:n + 1), s%uf(nx, 0:n + 1), &
              s%vf(nx, 0:n + 1), s%q(nx, 0:n + 1), s%bern(nx, 0:n + 1), &
              s%du(nx, n), s%dv(nx, n), s%dh(nx, n), s%fu(nx, n), s%fv(nx, n), s%fh(nx, n), &
              s%fh1(nx, n), s%wind_u(nx, n), s%wind_v(nx, n), s%h_eq(nx, n), source=0.0_dp, &
              stat=stat)
    if (stat /= 0) then
      errmsg = 'cannot allocate the state of nx = '//itoa(nx)//' by '//itoa(n)//' rows'
      return
    end if
    allocate (s%ip(nx), s%im(nx))
    do i = 1, nx
      s%ip(i) = modulo(i, nx) + 1
      s%im(i) = modulo(i - 2, nx) + 1
    end do
    s%ncol = nx * n
    call gather_layout(nx, n, s%comm, s%counts, s%displs)
    mg = merge(nx, 1, s%rank == 0)
    ng = merge(cfg%ny, 1, s%rank == 0)
    allocate (s%ug(mg, ng), s%vg(mg, ng), s%hg(mg, ng), s%wg(mg, ng), source=0.0_dp)
    i = 0
    if (cfg%mode == 'coarse' .and. cfg%climate_window > 0) i = cfg%n_steps / cfg%climate_window
    allocate (s%w_time(i), s%w_zpdf(i), s%w_zspec(i), source=ieee_nan())
    allocate (s%h_counts(MAX_PDF_BINS), s%ke_spec(cfg%n_ke_waves), source=0.0_dp)
    allocate (s%cos_t(nx, cfg%n_ke_waves), s%sin_t(nx, cfg%n_ke_waves))
    if (cfg%n_ke_waves > 0) call dft_tables(nx, s%cos_t, s%sin_t)

    ! static forcing patterns, from global positions: wind stress at the u and v points, the
    ! relaxation target at the h points (a whole period in x and y: zero domain mean)
    lx = nx * cfg%dx
    ly = cfg%ny * cfg%dy
    f_wind = cfg%wind_u0 / (cfg%wind_days * DAY)
    do j = 1, n
      jg = s%first + j - 1
      yc = (jg - 0.5_dp) * cfg%dy
      do i = 1, nx
        xc = (i - 0.5_dp) * cfg%dx
        s%wind_u(i, j) = f_wind * cos(4 * PI * yc / ly)
        s%wind_v(i, j) = 0.3_dp * f_wind * sin(2 * PI * xc / lx)
        s%h_eq(i, j) = cfg%h_eq_amplitude * sin(2 * PI * xc / lx) * sin(2 * PI * yc / ly)
      end do
    end do

    ! initial state: snapshot init_index of a truth file, or keyed random small perturbations
    ! (keyed by the global column index, so every decomposition starts from the same state)
    if (len_trim(cfg%init_file) > 0) then
      call load('u', s%u)
      if (stat == 0) call load('v', s%v)
      if (stat == 0) call load('h', s%h)
      if (stat /= 0) return
    else
      do j = 1, n
        jg = s%first + j - 1
        do i = 1, nx
          c = int(i + (jg - 1) * nx, i8)
          s%u(i, j) = 0.01_dp * host_normal(cfg%seed, 1_i8, c)
          s%v(i, j) = 0.01_dp * host_normal(cfg%seed, 2_i8, c)
          s%h(i, j) = host_normal(cfg%seed, 3_i8, c)
        end do
      end do
    end if
    s%fh1 = ieee_nan()
    stat = 0
  contains
    !> a(:, 1:n) = this rank's rows of snapshot init_index of dataset `name` (nx, ny, time).
    subroutine load(name, a)
      character(len=*), intent(in) :: name
      real(dp), intent(inout) :: a(:, 0:)
      integer, allocatable :: shp(:)
      integer(i8) :: off
      integer :: jj
      call h5_dataset_shape(trim(cfg%init_file), name, shp, stat, errmsg)
      if (stat /= 0) return
      if (size(shp) /= 3) then
        stat = 1
      else if (shp(1) /= cfg%nx .or. shp(2) /= cfg%ny) then
        stat = 1
      end if
      if (stat /= 0) then
        errmsg = trim(cfg%init_file)//': dataset '//name//' must be (x, y, time) with nx = '// &
                 itoa(cfg%nx)//', ny = '//itoa(cfg%ny)//' (Fortran order)'
        return
      end if
      if (cfg%init_index > shp(3)) then
        stat = 1
        errmsg = trim(cfg%init_file)//': init_index '//itoa(cfg%init_index)//' > '// &
                 itoa(shp(3))//' snapshots'
        return
      end if
      if (.not. allocated(init)) allocate (init(product(shp)))
      if (size(init) /= product(shp)) then
        deallocate (init)
        allocate (init(product(shp)))
      end if
      call h5_read_doubles(trim(cfg%init_file), name, init, stat, errmsg)
      if (stat /= 0) return
      off = int(cfg%init_index - 1, i8) * cfg%nx * cfg%ny
      do jj = 1, s%n
        a(:, jj) = init(off + int(s%first + jj - 2, i8) * cfg%nx + 1: &
                        off + int(s%first + jj - 1, i8) * cfg%nx)
      end do
      if (.not. all(abs(a(:, 1:s%n)) <= huge(1.0_dp))) then
        stat = 1
        errmsg = trim(cfg%init_file)//': the initial '//name//' has non-finite values'
      end if
    end subroutine load
  end subroutine setup

  ! ---------------------------------------------------------------------------------------
  ! dynamics on this rank's rows (the fields passed in have valid halo rows)

  !> du, dv, dh (rows 1..n) = the adiabatic shallow-water tendencies of (u, v, h) + theta
  !> (s%fu, s%fv, s%fh). Vector-invariant momentum with the energy-conserving vorticity flux
  !> of Sadourny (1975): q = (f0 + zeta) / D at the corners, D = depth + h,
  !>   du/dt =  avg_y(q avg_x(V)) - d/dx(B),   dv/dt = -avg_x(q avg_y(U)) - d/dy(B),
  !>   dh/dt = -(d/dx(U) + d/dy(V)),   U = avg_x(D) u, V = avg_y(D) v,
  !>   B = (u^2 averaged to the centre + v^2 averaged to the centre) / 2 + g h.
  !> The Coriolis/vorticity term does no work, and the flux-form continuity conserves mass to
  !> round-off on the periodic domain.
  subroutine dynamics(cfg, s, u, v, h)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    real(dp), intent(in) :: u(:, 0:), v(:, 0:), h(:, 0:)
    integer :: i, j, n, nx, w, e
    real(dp) :: rdx, rdy, zeta, dcorner
    n = s%n
    nx = cfg%nx
    rdx = 1 / cfg%dx
    rdy = 1 / cfg%dy
    do j = 0, n + 1
      do i = 1, nx
        s%dd(i, j) = cfg%depth + h(i, j)
      end do
    end do
    ! mass fluxes: U on rows 0..n (v needs the row below), V on rows 1..n+1 (u and h need the
    ! row above)
    do j = 0, n + 1
      do i = 1, nx
        s%uf(i, j) = 0.5_dp * (s%dd(s%im(i), j) + s%dd(i, j)) * u(i, j)
      end do
    end do
    do j = 1, n + 1
      do i = 1, nx
        s%vf(i, j) = 0.5_dp * (s%dd(i, j - 1) + s%dd(i, j)) * v(i, j)
        w = s%im(i)
        zeta = (v(i, j) - v(w, j)) * rdx - (u(i, j) - u(i, j - 1)) * rdy
        dcorner = 0.25_dp * (s%dd(w, j - 1) + s%dd(i, j - 1) + s%dd(w, j) + s%dd(i, j))
        s%q(i, j) = (cfg%f0 + zeta) / dcorner
      end do
    end do
    ! Bernoulli function on rows 0..n
    do j = 0, n
      do i = 1, nx
        s%bern(i, j) = 0.25_dp * (u(i, j)**2 + u(s%ip(i), j)**2 + v(i, j)**2 + v(i, j + 1)**2) + &
                       cfg%g * h(i, j)
      end do
    end do
    do j = 1, n
      do i = 1, nx
        w = s%im(i)
        e = s%ip(i)
        s%du(i, j) = 0.25_dp * (s%q(i, j) * (s%vf(w, j) + s%vf(i, j)) + &
                                s%q(i, j + 1) * (s%vf(w, j + 1) + s%vf(i, j + 1))) - &
                     (s%bern(i, j) - s%bern(w, j)) * rdx + s%fu(i, j)
        s%dv(i, j) = -0.25_dp * (s%q(i, j) * (s%uf(i, j - 1) + s%uf(i, j)) + &
                                 s%q(e, j) * (s%uf(e, j - 1) + s%uf(e, j))) - &
                     (s%bern(i, j) - s%bern(i, j - 1)) * rdy + s%fv(i, j)
        s%dh(i, j) = -((s%uf(e, j) - s%uf(i, j)) * rdx + (s%vf(i, j + 1) - s%vf(i, j)) * rdy) + &
                     s%fh(i, j)
      end do
    end do
  end subroutine dynamics

  !> The truth forcing theta of the state (u, v, h) into s%fu, s%fv, s%fh: wind stress (scaled
  !> by wind_scale) - drag + Laplacian viscosity, and (if relaxation) (h_eq - h) / relax_days.
  subroutine truth_forcing(cfg, s, u, v, h)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    real(dp), intent(in) :: u(:, 0:), v(:, 0:), h(:, 0:)
    integer :: i, j, w, e
    real(dp) :: r, rdx2, rdy2, rtau
    r = 0
    if (cfg%drag_days > 0) r = 1 / (cfg%drag_days * DAY)
    rtau = 0
    if (cfg%relaxation) rtau = 1 / (cfg%relax_days * DAY)
    rdx2 = 1 / cfg%dx**2
    rdy2 = 1 / cfg%dy**2
    do j = 1, s%n
      do i = 1, cfg%nx
        w = s%im(i)
        e = s%ip(i)
        s%fu(i, j) = cfg%wind_scale * s%wind_u(i, j) - r * u(i, j) + cfg%viscosity * &
                     ((u(e, j) - 2 * u(i, j) + u(w, j)) * rdx2 + &
                      (u(i, j + 1) - 2 * u(i, j) + u(i, j - 1)) * rdy2)
        s%fv(i, j) = cfg%wind_scale * s%wind_v(i, j) - r * v(i, j) + cfg%viscosity * &
                     ((v(e, j) - 2 * v(i, j) + v(w, j)) * rdx2 + &
                      (v(i, j + 1) - 2 * v(i, j) + v(i, j - 1)) * rdy2)
        s%fh(i, j) = rtau * (s%h_eq(i, j) - h(i, j))
      end do
    end do
  end subroutine truth_forcing

  !> NN input of one variable a for cell (i, j): centre, west, east, south, north.
  pure subroutine stencil5(a, i, j, w, e, x)
    real(dp), intent(in) :: a(:, 0:)
    integer, intent(in) :: i, j, w, e
    real(wp), intent(out) :: x(5)
    x(1) = real(a(i, j), wp)
    x(2) = real(a(w, j), wp)
    x(3) = real(a(e, j), wp)
    x(4) = real(a(i, j - 1), wp)
    x(5) = real(a(i, j + 1), wp)
  end subroutine stencil5

  !> The halos of the stage's state (u, v, h), then theta from the closure into s%fu, s%fv,
  !> s%fh, or for 'nn' the network's inputs of this rank's columns into nn_in (local column
  !> c = i + (j-1) nx; the driver calls the coupler, theta is taken in forcing_end).
  subroutine forcing_begin(cfg, s, closure, u, v, h, nn_in)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    character(len=*), intent(in) :: closure
    real(dp), intent(inout) :: u(:, 0:), v(:, 0:), h(:, 0:)
    real(wp), intent(inout), contiguous :: nn_in(:, :)
    integer :: i, j, c
    call ring_exchange(u, s%n, 1, 1, s%comm)
    call ring_exchange(v, s%n, 1, 1, s%comm)
    call ring_exchange(h, s%n, 1, 1, s%comm)
    select case (closure)
    case ('none')
      s%fu = 0
      s%fv = 0
      s%fh = 0
    case ('truth')
      call truth_forcing(cfg, s, u, v, h)
    case ('nn')
      do j = 1, s%n
        do i = 1, cfg%nx
          c = i + (j - 1) * cfg%nx
          call stencil5(u, i, j, s%im(i), s%ip(i), nn_in(1:5, c))
          call stencil5(v, i, j, s%im(i), s%ip(i), nn_in(6:10, c))
          call stencil5(h, i, j, s%im(i), s%ip(i), nn_in(11:15, c))
        end do
      end do
    end select
  end subroutine forcing_begin

  !> For 'nn': theta from the network's outputs.
  subroutine forcing_end(cfg, s, closure, nn_out)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    character(len=*), intent(in) :: closure
    real(wp), intent(in), contiguous :: nn_out(:, :)
    integer :: i, j, c
    if (closure /= 'nn') return
    do j = 1, s%n
      do i = 1, cfg%nx
        c = i + (j - 1) * cfg%nx
        s%fu(i, j) = real(nn_out(1, c), dp)
        s%fv(i, j) = real(nn_out(2, c), dp)
        s%fh(i, j) = real(nn_out(3, c), dp)
      end do
    end do
  end subroutine forcing_end

  !> Stage `stage` of SSP-RK3 (Shu-Osher) up to its closure: the state of the stage (x, then
  !> x1, then x2 in us, vs, hs) and its forcing (forcing_begin).
  subroutine stage_begin(cfg, s, stage, closure, nn_in)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    integer, intent(in) :: stage
    character(len=*), intent(in) :: closure
    real(wp), intent(inout), contiguous :: nn_in(:, :)
    if (stage == 1) then
      call forcing_begin(cfg, s, closure, s%u, s%v, s%h, nn_in)
    else
      call forcing_begin(cfg, s, closure, s%us, s%vs, s%hs, nn_in)
    end if
  end subroutine stage_begin

  !> The rest of the stage: theta, the tendencies L and the update
  !>   x1 = x + dt L(x),  x2 = 3/4 x + 1/4 (x1 + dt L(x1)),  x <- 1/3 x + 2/3 (x2 + dt L(x2)).
  subroutine stage_end(cfg, s, stage, closure, nn_out)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    integer, intent(in) :: stage
    character(len=*), intent(in) :: closure
    real(wp), intent(in), contiguous :: nn_out(:, :)
    real(dp), parameter :: THIRD = 1.0_dp / 3, TWO_THIRDS = 2.0_dp / 3
    real(dp) :: dt
    integer :: n
    dt = cfg%dt
    n = s%n
    call forcing_end(cfg, s, closure, nn_out)
    select case (stage)
    case (1)
      call dynamics(cfg, s, s%u, s%v, s%h)
      s%fh1 = s%fh
      s%us(:, 1:n) = s%u(:, 1:n) + dt * s%du
      s%vs(:, 1:n) = s%v(:, 1:n) + dt * s%dv
      s%hs(:, 1:n) = s%h(:, 1:n) + dt * s%dh
    case (2)
      call dynamics(cfg, s, s%us, s%vs, s%hs)
      s%us(:, 1:n) = 0.75_dp * s%u(:, 1:n) + 0.25_dp * (s%us(:, 1:n) + dt * s%du)
      s%vs(:, 1:n) = 0.75_dp * s%v(:, 1:n) + 0.25_dp * (s%vs(:, 1:n) + dt * s%dv)
      s%hs(:, 1:n) = 0.75_dp * s%h(:, 1:n) + 0.25_dp * (s%hs(:, 1:n) + dt * s%dh)
    case (3)
      call dynamics(cfg, s, s%us, s%vs, s%hs)
      s%u(:, 1:n) = THIRD * s%u(:, 1:n) + TWO_THIRDS * (s%us(:, 1:n) + dt * s%du)
      s%v(:, 1:n) = THIRD * s%v(:, 1:n) + TWO_THIRDS * (s%vs(:, 1:n) + dt * s%dv)
      s%h(:, 1:n) = THIRD * s%h(:, 1:n) + TWO_THIRDS * (s%hs(:, 1:n) + dt * s%dh)
    end select
  end subroutine stage_end

  !> One SSP-RK3 step with a closure that is not the network (the coarse run's spin-up).
  subroutine sw_step(cfg, s, closure)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    character(len=*), intent(in) :: closure
    real(wp) :: no_columns(N_IN, 0)
    integer :: stage
    do stage = 1, 3
      call stage_begin(cfg, s, stage, closure, no_columns)
      call stage_end(cfg, s, stage, closure, no_columns)
    end do
  end subroutine sw_step

  ! ---------------------------------------------------------------------------------------
  ! checks and global diagnostics

  !> Gathers u, v, h and theta_h of the first stage (s%fh1) on rank 0 (collective) and returns
  !> there the global diagnostics d(ND), summed in one order (D_* in this module):
  !> domain means of KE = (depth + h)(u^2 + v^2)/2 with u^2, v^2 averaged to the centre and of
  !> PE = g h^2 / 2 (m^3/s^2), their sum; mass = area-integrated depth + h (m^3); mean and std
  !> of h; max and mean of the centred speed; the domain mean of theta_h.
  subroutine global_diag(cfg, s, d)
    type(sw_config_t), intent(in) :: cfg
    class(sw_host_t), intent(inout) :: s
    real(dp), intent(out) :: d(ND)
    integer :: i, j, ny, nx, e, nn
    real(dp) :: sh, sh2, ke, pe, smax, ssum, speed, mean_h, st
    call gather_columns_dp(s%u(:, 1:s%n), s%ug, s%counts, s%displs, s%comm)
    call gather_columns_dp(s%v(:, 1:s%n), s%vg, s%counts, s%displs, s%comm)
    call gather_columns_dp(s%h(:, 1:s%n), s%hg, s%counts, s%displs, s%comm)
    call gather_columns_dp(s%fh1, s%wg, s%counts, s%displs, s%comm)
    d = ieee_nan()
    if (s%rank /= 0) return
    nx = cfg%nx
    ny = cfg%ny
    nn = nx * ny
    sh = 0; ke = 0; pe = 0; smax = 0; ssum = 0; st = 0
    do j = 1, ny
      do i = 1, nx
        e = s%ip(i)
        sh = sh + s%hg(i, j)
        ke = ke + 0.5_dp * (cfg%depth + s%hg(i, j)) * 0.5_dp * &
             (s%ug(i, j)**2 + s%ug(e, j)**2 + s%vg(i, j)**2 + s%vg(i, modulo(j, ny) + 1)**2)
        pe = pe + 0.5_dp * cfg%g * s%hg(i, j)**2
        speed = sqrt((0.5_dp * (s%ug(i, j) + s%ug(e, j)))**2 + &
                     (0.5_dp * (s%vg(i, j) + s%vg(i, modulo(j, ny) + 1)))**2)
        smax = max(smax, speed)
        ssum = ssum + speed
        st = st + s%wg(i, j)
      end do
    end do
    mean_h = sh / nn
    sh2 = 0
    do j = 1, ny
      do i = 1, nx
        sh2 = sh2 + (s%hg(i, j) - mean_h)**2
      end do
    end do
    d(D_MASS) = cfg%dx * cfg%dy * (nn * cfg%depth + sh)
    d(D_MEAN_H) = mean_h
    d(D_H_STD) = sqrt(sh2 / nn)
    d(D_KE) = ke / nn
    d(D_PE) = pe / nn
    d(D_ENERGY) = d(D_KE) + d(D_PE)
    d(D_MAX_SPEED) = smax
    d(D_MEAN_SPEED) = ssum / nn
    d(D_THETA_H_MEAN) = st / nn
  end subroutine global_diag

  ! ---------------------------------------------------------------------------------------
  ! output helpers

  !> The x and y coordinates: cell-centre (h-point) positions in m; u(i, j) lies dx/2 west of
  !> x(i), v(i, j) dy/2 south of y(j).
  subroutine write_grid(cfg, out)
    type(sw_config_t), intent(in) :: cfg
    type(h5_out_t), intent(inout) :: out
    integer :: i
    call out%dim('x', [((i - 0.5_dp) * cfg%dx, i = 1, cfg%nx)])
    call out%dim('y', [((i - 0.5_dp) * cfg%dy, i = 1, cfg%ny)])
  end subroutine write_grid

  !> The model and forcing parameters as file attributes (SI units; time in s).
  subroutine write_params(cfg, out)
    type(sw_config_t), intent(in) :: cfg
    type(h5_out_t), intent(inout) :: out
    call out%attr_str('host', 'sw')
    call out%attr_str('mode', trim(cfg%mode))
    call out%attr_str('grid', 'Arakawa C: h(i,j) at the cell centre, u(i,j) on the west face, '// &
                      'v(i,j) on the south face; x, y = cell centres (m); time in s')
    call out%attr_real('nx', real(cfg%nx, dp))
    call out%attr_real('ny', real(cfg%ny, dp))
    call out%attr_real('dx', cfg%dx)
    call out%attr_real('dy', cfg%dy)
    call out%attr_real('f0', cfg%f0)
    call out%attr_real('g', cfg%g)
    call out%attr_real('depth', cfg%depth)
    call out%attr_real('viscosity', cfg%viscosity)
    call out%attr_real('drag_days', cfg%drag_days)
    call out%attr_real('wind_u0', cfg%wind_u0)
    call out%attr_real('wind_days', cfg%wind_days)
    call out%attr_real('wind_scale', cfg%wind_scale)
    call out%attr_real('relax_days', cfg%relax_days)
    call out%attr_real('relaxation', merge(1.0_dp, 0.0_dp, cfg%relaxation))
    call out%attr_real('h_eq_amplitude', cfg%h_eq_amplitude)
    call out%attr_real('dt', cfg%dt)
  end subroutine write_params

  !> a - clim, or NaN where the climatology is not given (clim = 0).
  function bias(a, clim) result(b)
    real(dp), intent(in) :: a(:), clim
    real(dp) :: b(size(a))
    if (clim > 0) then
      b = a - clim
    else
      b = ieee_nan()
    end if
  end function bias

  !> Root mean square over the finite records of a - clim (NaN where clim is not given).
  real(dp) function rms_vs(a, clim)
    real(dp), intent(in) :: a(:), clim
    if (clim > 0) then
      rms_vs = sqrt(mean_finite((a - clim)**2))
    else
      rms_vs = ieee_nan()
    end if
  end function rms_vs
end module sw_host
