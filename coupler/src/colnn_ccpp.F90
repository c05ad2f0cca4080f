!> The coupler as a CCPP physics scheme (scheme `colnn_ccpp`, arguments in colnn_ccpp.meta,
!> checked against this file by CCPP's own metadata parser): the host's real64 arrays in CCPP's
!> layout (horizontal_loop_extent, features), passed to the network as they are; errmsg and
!> errflg last; init idempotent; no I/O in _run; _run safe from the threads of a host that
!> runs its horizontal loop in chunks. One network per program through this scheme; a host
!> that couples several uses colnn_scheme_t (module colnn_coupler) directly.
module colnn_ccpp
  use, intrinsic :: iso_fortran_env, only: real64
  use colnn_coupler, only: colnn_scheme_t
  implicit none
  private

  public :: colnn_ccpp_init, colnn_ccpp_run, colnn_ccpp_finalize

  !> the precision of the host's physics (CCPP's kind_phys); the library converts to its own
  integer, parameter :: kind_phys = real64

  type(colnn_scheme_t), save :: scheme

contains

!> \section arg_table_colnn_ccpp_init Argument Table
!! \htmlinclude colnn_ccpp_init.html
!!
  subroutine colnn_ccpp_init(config_file, n_inputs, n_outputs, host_closure, errmsg, errflg)
    character(len=*), intent(in) :: config_file !! namelist file with the &colnn_coupler group
    integer, intent(in) :: n_inputs             !! features per column the host passes
    integer, intent(in) :: n_outputs            !! features per column the host expects
    !> the host passes its own closure to _run (fallback and ramp_steps need it)
    logical, intent(in), optional :: host_closure
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    call scheme%init(config_file, n_inputs, n_outputs, errmsg, errflg, host_closure=host_closure)
  end subroutine colnn_ccpp_init

!> \section arg_table_colnn_ccpp_run Argument Table
!! \htmlinclude colnn_ccpp_run.html
!!
  subroutine colnn_ccpp_run(col_start, kstep, inputs, outputs, closure, n_fallback, errmsg, &
                            errflg)
    integer, intent(in) :: col_start                !! global index of the chunk's first column
    integer, intent(in) :: kstep                    !! the time step (key of ensemble noise)
    real(kind_phys), intent(in) :: inputs(:, :)     !! (columns, n_inputs)
    real(kind_phys), intent(out) :: outputs(:, :)   !! (columns, n_outputs)
    !> the host's own closure of the columns (columns, n_outputs): fallback and ramp take it
    real(kind_phys), intent(in), optional :: closure(:, :)
    integer, intent(out), optional :: n_fallback    !! columns that fell back to the closure
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    call scheme%run(inputs, outputs, errmsg, errflg, column_offset=col_start - 1, step=kstep, &
                    columns_first=.true., closure=closure, n_fallback=n_fallback)
  end subroutine colnn_ccpp_run

!> \section arg_table_colnn_ccpp_finalize Argument Table
!! \htmlinclude colnn_ccpp_finalize.html
!!
  subroutine colnn_ccpp_finalize(errmsg, errflg)
    character(len=*), intent(out) :: errmsg
    integer, intent(out) :: errflg
    call scheme%finalize(errmsg, errflg)
  end subroutine colnn_ccpp_finalize
end module colnn_ccpp
