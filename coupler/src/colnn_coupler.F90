!> The NN parameterization as a host model calls it, in the style of a CCPP physics scheme:
!> colnn_coupler_init / _run / _finalize with errmsg/errflg (set on entry, never `stop`), no I/O
!> in _run, whole column chunks of any size. _run is safe to call from several threads at once
!> on different chunks (a host's OpenMP loop over chunks) with the results of a serial loop,
!> bit for bit; online training (targets) is refused there. A single network or an ensemble (with input noise)
!> stands behind it, and an optional online-training hook takes the host's targets.
!> Arguments are described CCPP-style in colnn_coupler.meta.
module colnn_coupler
  use colnn
  !$ use omp_lib, only: omp_in_parallel
  implicit none
  private

  public :: colnn_coupler_init, colnn_coupler_run, colnn_coupler_finalize, colnn_coupler_config_t
  public :: colnn_coupler_sizes, colnn_coupler_get_config

  !> Read from the namelist group &colnn_coupler of the configuration file.
  type :: colnn_coupler_config_t
    character(len=1024) :: model_file = ''     !< a colnn (or FKB) file, or
    character(len=1024) :: ensemble = ''       !< a directory of *.colnn files or a list file
    real :: noise_sd = 0.0                     !< ensemble input noise (one sd for all inputs)
    integer :: noise_seed = 0
    logical :: check_finite = .true.           !< NaN/Inf inputs or outputs set errflg
    logical :: online_training = .false.       !< _run with targets takes one optimizer step
    character(len=256) :: optimizer = 'adam learning_rate=0.0001'
    character(len=64) :: loss = 'mse'
  end type colnn_coupler_config_t

  ! the scheme's state (one instance per program, as a CCPP scheme)
  logical, save :: initialized = .false.
  logical, save :: use_ensemble = .false.
  type(network_t), save :: net
  type(ensemble_t), save :: ens
  type(trainer_t), save :: trainer
  type(colnn_coupler_config_t), save :: cfg
  integer, save :: n_in = 0, n_out = 0

contains

  !> Reads the namelist, loads the model, checks it maps n_inputs host features to n_outputs.
  subroutine colnn_coupler_init(config_file, n_inputs, n_outputs, errmsg, errflg)
    character(len=*), intent(in) :: config_file
    integer, intent(in) :: n_inputs, n_outputs
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    character(len=1024) :: model_file, ensemble, optimizer_line
    real :: noise_sd
    integer :: noise_seed, u, ios, stat
    logical :: check_finite, online_training
    character(len=256) :: optimizer
    character(len=64) :: loss
    character(len=512) :: iomsg
    namelist /colnn_coupler/ model_file, ensemble, noise_sd, noise_seed, check_finite, &
      online_training, optimizer, loss

    errmsg = ''
    errflg = 0
    if (initialized) call colnn_coupler_finalize(errmsg, errflg)
    model_file = ''; ensemble = ''; noise_sd = 0; noise_seed = 0; check_finite = .true.
    online_training = .false.; optimizer = cfg%optimizer; loss = cfg%loss
    open (newunit=u, file=config_file, status='old', action='read', iostat=ios, iomsg=iomsg)
    if (ios /= 0) then
      errflg = 1
      errmsg = 'colnn_coupler_init: cannot open '//trim(config_file)//': '//trim(iomsg)
      return
    end if
    read (u, nml=colnn_coupler, iostat=ios, iomsg=iomsg)
    close (u)
    if (ios < 0) then
      errflg = 1
      errmsg = 'colnn_coupler_init: '//trim(config_file)//': no complete &colnn_coupler group '// &
               '(is it missing, unterminated by /, or the last line without a newline?)'
      return
    else if (ios > 0) then
      errflg = 1
      errmsg = 'colnn_coupler_init: '//trim(config_file)//': bad &colnn_coupler namelist: '// &
               trim(iomsg)
      return
    end if
    if ((len_trim(model_file) == 0) .eqv. (len_trim(ensemble) == 0)) then
      errflg = 1
      errmsg = 'colnn_coupler_init: '//trim(config_file)//': give exactly one of model_file '// &
               'and ensemble'
      return
    end if
    if (noise_sd < 0 .or. noise_sd /= noise_sd) then
      errflg = 1
      errmsg = 'colnn_coupler_init: '//trim(config_file)//': noise_sd must be >= 0'
      return
    end if
    if (noise_sd > 0 .and. len_trim(ensemble) == 0) then
      errflg = 1
      errmsg = 'colnn_coupler_init: '//trim(config_file)//': input noise needs an ensemble'
      return
    end if
    cfg = colnn_coupler_config_t(model_file, ensemble, noise_sd, noise_seed, check_finite, &
                                 online_training, optimizer, loss)
    use_ensemble = len_trim(ensemble) > 0
    if (use_ensemble) then
      if (online_training) then
        errflg = 1
        errmsg = 'colnn_coupler_init: online training takes a single model, not an ensemble'
        return
      end if
      inquire (file=trim(ensemble)//'/.', exist=check_finite)
      if (check_finite) then
        call ens%load_dir(trim(ensemble), stat, errmsg)
      else
        call ens%load_list(trim(ensemble), stat, errmsg)
      end if
      check_finite = cfg%check_finite
      if (stat == 0 .and. noise_sd > 0) call ens%set_noise([real(noise_sd, wp)], &
                                                          int(noise_seed, 8), stat, errmsg)
      if (stat == 0) then
        n_in = ens%n_inputs
        n_out = ens%n_outputs
        ens%members(:)%check_finite = check_finite
      end if
    else
      call net%load(trim(model_file), stat, errmsg)
      if (stat == 0) then
        n_in = net%n_inputs
        n_out = net%n_outputs
        net%check_finite = check_finite
      end if
      if (stat == 0 .and. online_training) then
        optimizer_line = optimizer
        call trainer%configure(trim(optimizer_line), trim(loss), stat, errmsg)
      end if
    end if
    if (stat /= 0) then
      errflg = 1
      errmsg = 'colnn_coupler_init: '//trim(errmsg)
      call release()
      return
    end if
    if (n_in /= n_inputs .or. n_out /= n_outputs) then
      errflg = 1
      write (errmsg, '(a,i0,a,i0,a,i0,a,i0,a)') 'colnn_coupler_init: the model maps ', n_in, &
        ' inputs to ', n_out, ' outputs, the host passes ', n_inputs, ' features and expects ', &
        n_outputs
      call release()
      return
    end if
    initialized = .true.
  end subroutine colnn_coupler_init

  !> outputs(n_outputs, ncol) = NN(inputs(n_inputs, ncol)) for one chunk of columns.
  !> column_offset: global index (0-based) of the chunk's first column (ensemble noise).
  !> step: the host's time step (the ensemble's noise key; chunks of one step share it).
  !> targets: with online_training, one optimizer step on (inputs, targets) after the forward.
  subroutine colnn_coupler_run(inputs, outputs, errmsg, errflg, column_offset, targets, step)
    real(wp), intent(in) :: inputs(:, :)
    real(wp), intent(out) :: outputs(:, :)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    integer, intent(in), optional :: column_offset
    real(wp), intent(in), optional :: targets(:, :)
    integer, intent(in), optional :: step
    integer :: stat
    integer(8) :: col0
    real(wp) :: loss
    errmsg = ''
    errflg = 0
    if (.not. initialized) then
      errflg = 1
      errmsg = 'colnn_coupler_run: colnn_coupler_init has not succeeded'
      return
    end if
    if (use_ensemble) then
      col0 = 0
      if (present(column_offset)) col0 = column_offset
      if (present(step)) then
        call ens%forward(inputs, outputs, stat, errmsg, column_offset=col0, step=int(step, 8))
      else
        call ens%forward(inputs, outputs, stat, errmsg, column_offset=col0)
      end if
    else
      call net%forward(inputs, outputs, stat, errmsg)
    end if
    if (stat == 0 .and. present(targets) .and. cfg%online_training) then
      ! a training step changes the weights the other threads are using
      !$ if (omp_in_parallel()) then
      !$   errflg = 1
      !$   errmsg = 'colnn_coupler_run: online training changes the network; call _run with '// &
      !$            'targets from one thread (outside the parallel loop over chunks)'
      !$   return
      !$ end if
      call trainer%online_step(net, inputs, targets, loss, stat, errmsg)
    end if
    if (stat /= 0) then
      errflg = 1
      errmsg = 'colnn_coupler_run: '//trim(errmsg)
    end if
  end subroutine colnn_coupler_run

  subroutine colnn_coupler_finalize(errmsg, errflg)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    errmsg = ''
    errflg = 0
    call release()
  end subroutine colnn_coupler_finalize

  !> Features the initialised scheme takes and gives (0, 0 before a successful init).
  subroutine colnn_coupler_sizes(n_inputs, n_outputs)
    integer, intent(out) :: n_inputs, n_outputs
    n_inputs = n_in
    n_outputs = n_out
  end subroutine colnn_coupler_sizes

  !> The configuration the scheme was initialised with (for provenance: the model's path).
  subroutine colnn_coupler_get_config(config)
    type(colnn_coupler_config_t), intent(out) :: config
    config = cfg
  end subroutine colnn_coupler_get_config

  subroutine release()
    call net%destroy()
    call ens%destroy()
    initialized = .false.
    n_in = 0
    n_out = 0
  end subroutine release
end module colnn_coupler
